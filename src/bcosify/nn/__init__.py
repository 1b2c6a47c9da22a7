"""B-cos layers and explanation mode.

Every module here computes the same function as its ordinary counterpart (up to the documented
B-cos changes) and becomes dynamic linear, ``y = W(x) x``, inside :func:`explanation_mode`.
"""

from .activation import (
    BcosGELU,
    BcosHardswish,
    BcosMish,
    BcosQuickGELU,
    BcosReLU6,
    BcosSiLU,
    BcosSquaredReLU,
    GatedActivation,
)
from .attention import (
    BcosMultiheadAttention,
    BcosWindowAttention,
    DynamicAttention,
    dynamic_attention,
)
from .attention_pool import BcosAttentionPool2d
from .bcos import MAX_B, BcosConv2d, BcosLinear, check_b
from .constants import ConstantTerms
from .dynamic_mode import DynamicLinearMode
from .embedding import BcosTokenEmbedding
from .encoding import InputEncoding, InputNormalization
from .gate import DetachedFactor, DetachedGate
from .logit_bias import LogitBias
from .mode import ExplanationAware, explanation_mode, is_explaining
from .norm import (
    BcosBatchNorm1d,
    BcosBatchNorm2d,
    BcosGlobalResponseNorm,
    BcosGroupNorm,
    BcosLayerNorm,
    BcosLayerNorm2d,
    BcosNormalize,
)
from .pooled_norm import PooledLayerNorm
from .rms_norm import BcosRMSNorm
from .text_attention import TextAttention
from .trace import ExplanationTrace, traced_constant, traced_input

__all__ = [
    "MAX_B",
    "BcosAttentionPool2d",
    "BcosBatchNorm1d",
    "BcosBatchNorm2d",
    "BcosConv2d",
    "BcosGELU",
    "BcosGlobalResponseNorm",
    "BcosGroupNorm",
    "BcosHardswish",
    "BcosLayerNorm",
    "BcosLayerNorm2d",
    "BcosLinear",
    "BcosMish",
    "BcosMultiheadAttention",
    "BcosNormalize",
    "BcosQuickGELU",
    "BcosRMSNorm",
    "BcosReLU6",
    "BcosSiLU",
    "BcosSquaredReLU",
    "BcosTokenEmbedding",
    "BcosWindowAttention",
    "ConstantTerms",
    "DetachedFactor",
    "DetachedGate",
    "DynamicAttention",
    "DynamicLinearMode",
    "ExplanationAware",
    "ExplanationTrace",
    "GatedActivation",
    "InputEncoding",
    "InputNormalization",
    "LogitBias",
    "PooledLayerNorm",
    "TextAttention",
    "check_b",
    "dynamic_attention",
    "explanation_mode",
    "is_explaining",
    "traced_constant",
    "traced_input",
]
