"""B-cos text classifiers: transformers sequence classifiers converted with their module tree.

For tiny random configs of every family (nothing downloaded): with ``b=1, keep_bias=True`` the
logits equal the original's; with the defaults the per-token contributions plus the named
constants equal the logit on a live signal; padding tokens contribute exactly zero; a padded
batch explains every text as it is explained alone; the module tree, its classes and its hooks
are the original's; saving and loading (and pickling, deep-copying) gives the same model.
"""

from __future__ import annotations

import copy
import functools
import io
from collections import Counter

import pytest
import torch
from nets import assert_same_function, assert_signal, keep_signal_alive
from torch import nn

import bcosify
from bcosify.errors import ConversionError, OptionsError
from bcosify.explain.text import explain_tokens

transformers = pytest.importorskip("transformers")

VOCAB = 40
PAD = 0


def _configs() -> dict[str, tuple[str, object]]:
    common = {"vocab_size": VOCAB, "num_labels": 3, "pad_token_id": PAD}
    bert = {
        "hidden_size": 16,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "max_position_embeddings": 32,
    }
    decoder = {
        "hidden_size": 16,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "intermediate_size": 32,
        "max_position_embeddings": 32,
        "bos_token_id": 1,
        "eos_token_id": 1,
    }
    return {
        "bert": ("BertForSequenceClassification", transformers.BertConfig(**bert, **common)),
        "distilbert": (
            "DistilBertForSequenceClassification",
            transformers.DistilBertConfig(
                dim=16, n_layers=2, n_heads=2, hidden_dim=32, max_position_embeddings=32, **common
            ),
        ),
        "roberta": (
            "RobertaForSequenceClassification",
            transformers.RobertaConfig(**bert, **common),
        ),
        "llama": (
            "LlamaForSequenceClassification",
            transformers.LlamaConfig(
                hidden_size=16,
                num_hidden_layers=2,
                num_attention_heads=4,
                num_key_value_heads=2,  # grouped-query attention
                intermediate_size=32,
                max_position_embeddings=32,
                bos_token_id=1,
                eos_token_id=1,
                **common,
            ),
        ),
        # found by structure (RoBERTa's and BERT's layout under other names)
        "camembert": (
            "CamembertForSequenceClassification",
            transformers.CamembertConfig(**bert, **common),
        ),
        "ernie": ("ErnieForSequenceClassification", transformers.ErnieConfig(**bert, **common)),
        # found by structure (Llama's layout under other names): biases on q, k, v (Qwen2),
        # per-head query and key norms (Qwen3), a sliding window shorter than the texts
        # (Mistral)
        "qwen2": (
            "Qwen2ForSequenceClassification",
            transformers.Qwen2Config(**decoder, **common),
        ),
        "qwen3": (
            "Qwen3ForSequenceClassification",
            transformers.Qwen3Config(**decoder, head_dim=4, **common),
        ),
        "mistral": (
            "MistralForSequenceClassification",
            transformers.MistralConfig(**decoder, sliding_window=3, **common),
        ),
        # weightless layer norms (OLMo); a squared-ReLU MLP without gate (Arcee)
        "olmo": ("OlmoForSequenceClassification", transformers.OlmoConfig(**decoder, **common)),
        "arcee": (
            "ArceeForSequenceClassification",
            transformers.ArceeConfig(**decoder, **common),
        ),
        # token embeddings scaled by sqrt(hidden_size), RMS norms scaled by 1 + weight (Gemma)
        "gemma": (
            "GemmaForSequenceClassification",
            transformers.GemmaConfig(**decoder, head_dim=4, **common),
        ),
        # query and key norms of the whole projections (OLMo 2); layers of two types, with
        # a sliding window shorter than the texts and rotary embeddings of their own (OLMo 3)
        "olmo2": ("Olmo2ForSequenceClassification", transformers.Olmo2Config(**decoder, **common)),
        "olmo3": (
            "Olmo3ForSequenceClassification",
            transformers.Olmo3Config(
                **decoder,
                sliding_window=3,
                layer_types=["sliding_attention", "full_attention"],
                **common,
            ),
        ),
        # rotary embeddings on half of each head, a parallel MLP, ``dense`` out (Phi); one
        # fused query-key-value projection (Phi-3); half-turned heads again (StableLM)
        "phi": (
            "PhiForSequenceClassification",
            transformers.PhiConfig(**decoder, partial_rotary_factor=0.5, **common),
        ),
        "phi3": ("Phi3ForSequenceClassification", transformers.Phi3Config(**decoder, **common)),
        "stablelm": (
            "StableLmForSequenceClassification",
            transformers.StableLmConfig(**decoder, partial_rotary_factor=0.5, **common),
        ),
        "gemma3_text": (
            "Gemma3TextForSequenceClassification",
            transformers.Gemma3TextConfig(
                **decoder,
                head_dim=4,
                sliding_window=3,
                layer_types=["sliding_attention", "full_attention"],
                **common,
            ),
        ),
        # no family knows them: their own code runs, made dynamic linear at run time
        "electra": (
            "ElectraForSequenceClassification",
            transformers.ElectraConfig(**bert, embedding_size=8, **common),
        ),
        "opt": (
            "OPTForSequenceClassification",
            transformers.OPTConfig(
                hidden_size=16,
                num_hidden_layers=2,
                num_attention_heads=2,
                ffn_dim=32,
                max_position_embeddings=32,
                word_embed_proj_dim=16,
                bos_token_id=1,
                eos_token_id=1,
                **common,
            ),
        ),
        "bloom": (
            "BloomForSequenceClassification",
            transformers.BloomConfig(hidden_size=16, n_layer=2, n_head=2, **common),
        ),
        "mixtral": (
            "MixtralForSequenceClassification",
            transformers.MixtralConfig(**decoder, num_local_experts=4, **common),
        ),
        "gpt2": (
            "GPT2ForSequenceClassification",
            transformers.GPT2Config(
                n_embd=16,
                n_layer=2,
                n_head=2,
                n_positions=32,
                bos_token_id=1,
                eos_token_id=1,
                **common,
            ),
        ),
    }


CONFIGS = _configs()
FAMILIES = list(CONFIGS)
ROTARY = {
    "llama",
    "qwen2",
    "qwen3",
    "mistral",
    "olmo",
    "arcee",
    "gemma",
    "olmo2",
    "olmo3",
    "gemma3_text",
    "phi",
    "phi3",
    "stablelm",
    "bloom",  # ALiBi: position biases on the detached attention scores
    "mixtral",
}


def randomise_text(model: nn.Module, seed: int = 0) -> nn.Module:
    """Random biases, norm scales and position/type embeddings, so that a conversion that
    dropped or misplaced any of them shows."""
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if name.endswith("bias"):
                parameter.uniform_(-0.2, 0.2, generator=generator)
            elif parameter.ndim == 1:
                parameter.uniform_(0.5, 1.5, generator=generator)
            elif "position" in name or "token_type" in name or "wpe" in name:
                parameter.normal_(0.0, 0.3, generator=generator)
            elif "embed" in name or "wte" in name:
                parameter.normal_(0.0, 1.0, generator=generator)
    return model.eval()


@functools.cache
def original(family: str) -> nn.Module:
    name, config = CONFIGS[family]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        return randomise_text(getattr(transformers, name)(config))


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Three texts of 7, 4 and 2 tokens, right-padded."""
    generator = torch.Generator().manual_seed(1)
    lengths = [7, 4, 2]
    ids = torch.randint(4, VOCAB, (3, 7), generator=generator)
    mask = (torch.arange(7)[None] < torch.tensor(lengths)[:, None]).long()
    return ids.masked_fill(mask == 0, PAD), mask


@functools.cache
def converted(family: str) -> bcosify.BcosTextModel:
    model, _ = bcosify.convert(original(family))
    ids, _ = batch()
    return keep_signal_alive(model, ids)


@pytest.mark.parametrize("family", FAMILIES)
def test_b1_with_biases_equals_the_original(family):
    ids, mask = batch()
    same, report = bcosify.convert(original(family), b=1.0, keep_bias=True)
    with torch.no_grad():
        reference = original(family)(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(same(ids, mask), reference, rtol=1e-4, atol=1e-6)
    assert report.replaced, str(report)


@pytest.mark.parametrize("family", FAMILIES)
def test_default_conversion_is_exact_and_padding_contributes_nothing(family):
    model = converted(family)
    ids, mask = batch()
    e = explain_tokens(model, ids, mask, target=[0, 1, 2])
    assert (e.residual.abs() <= 1e-4 * e.scores.abs().clamp_min(1)).all(), e.residual
    # a live signal: the tokens carry far more than the residual, so completeness is no accident
    signal = e.contributions.abs().sum(1)
    assert (signal > 1e-3).all() and (e.residual.abs() <= 1e-3 * signal).all(), (signal, e.residual)
    assert torch.equal(e.contributions[mask == 0], torch.zeros(int((mask == 0).sum())))
    assert "logit_bias.bias" in e.constants
    if family not in ROTARY:  # rotary positions act on the detached queries and keys
        assert any("position" in n or "wpe" in n for n in e.constants), list(e.constants)
    # no bias left anywhere on the explained path
    assert not [n for n, _ in model.named_parameters() if n.endswith("bias")]


@pytest.mark.parametrize("family", FAMILIES)
def test_a_batch_explains_every_text_as_alone(family):
    model = converted(family)
    ids, mask = batch()
    together = explain_tokens(model, ids, mask, target=[2, 0, 1])
    for i, length in enumerate(mask.sum(1).tolist()):
        alone = explain_tokens(
            model, ids[i : i + 1, :length], mask[i : i + 1, :length], [2, 0, 1][i]
        )
        torch.testing.assert_close(together.scores[i : i + 1], alone.scores, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(
            together.contributions[i : i + 1, :length], alone.contributions, rtol=1e-4, atol=1e-6
        )
        for name, value in alone.constants.items():
            torch.testing.assert_close(
                together.constants[name][i : i + 1], value, rtol=1e-4, atol=1e-6
            )


def _hook_counts(root: nn.Module, paths: list[str], run) -> Counter:
    counts: Counter = Counter()
    handles = [
        root.get_submodule(p).register_forward_hook(lambda *_, p=p: counts.update([p]))
        for p in paths
    ]
    try:
        with torch.no_grad():
            run()
    finally:
        for handle in handles:
            handle.remove()
    return counts


@pytest.mark.parametrize("family", FAMILIES)
def test_the_module_tree_and_its_hooks_are_the_originals(family):
    source, model = original(family), converted(family)
    ours, theirs = dict(model.network.named_modules()), dict(source.named_modules())
    assert not sorted(set(theirs) - set(ours))
    rules = bcosify.convert.default_rules()
    containers = [p for p, m in theirs.items() if p and next(m.children(), None) is not None]
    for path in containers:
        if type(theirs[path]) not in rules:
            assert isinstance(ours[path], type(theirs[path])), (path, type(ours[path]))
    ids, mask = batch()
    paths = ["", *containers]
    mine = _hook_counts(model.network, paths, lambda: model(ids, mask))
    assert mine == _hook_counts(source, paths, lambda: source(input_ids=ids, attention_mask=mask))


@pytest.mark.parametrize("family", FAMILIES)
def test_saved_and_loaded_it_is_the_same_model(family, tmp_path):
    model = converted(family)
    folder = model.save_pretrained(tmp_path / "model")
    loaded = bcosify.load(folder)
    assert isinstance(loaded, bcosify.BcosTextModel)
    ids, mask = batch()
    assert bcosify.BcosTextModel.from_pretrained(folder).config.architecture == CONFIGS[family][0]
    buffer = io.BytesIO()  # a whole-model pickle, as torch.save(model) writes, and a deep copy
    torch.save(model, buffer)
    buffer.seek(0)
    copies = (torch.load(buffer, weights_only=False), copy.deepcopy(model))
    for copied in copies:
        assert [type(m).__name__ for m in copied.modules()] == [
            type(m).__name__ for m in model.modules()
        ]
    assert_same_function(model, (ids, mask), loaded, *copies)


def test_image_options_and_wrong_inputs_are_refused():
    with pytest.raises(OptionsError, match="input_mean, input_std apply to image models"):
        bcosify.convert(original("bert"), input_mean=(0.5,), input_std=(0.5,))
    ids, mask = batch()
    with pytest.raises(ValueError, match="takes no token_type_ids"):
        converted("gpt2")(ids, mask, torch.zeros_like(ids))
    with pytest.raises(ValueError, match=r"token ids of shape \(N, L\)"):
        converted("bert")(ids.float(), mask)
    with pytest.raises(ConversionError, match="not a text classifier"):
        bcosify.convert_text(transformers.BertModel(CONFIGS["bert"][1]))
    with pytest.raises(ConversionError, match="BartForSequenceClassification: an encoder-decoder"):
        bcosify.convert(tiny_bart())  # a text model, refused with its reason (not as an image)


def tiny_bart() -> nn.Module:
    """An encoder-decoder classifier (refused: its tokens enter twice)."""
    config = transformers.BartConfig(
        vocab_size=VOCAB,
        d_model=16,
        encoder_layers=1,
        decoder_layers=1,
        encoder_attention_heads=2,
        decoder_attention_heads=2,
        encoder_ffn_dim=32,
        decoder_ffn_dim=32,
        max_position_embeddings=16,
    )
    return transformers.BartForSequenceClassification(config)


def _doubled_qwen2() -> nn.Module:
    class DoubledForSequenceClassification(transformers.Qwen2ForSequenceClassification):
        # a library class (by its module) whose output is not Llama's computation
        __module__ = "transformers.models.qwen2.modeling_qwen2"

        def forward(self, *args, **kwargs):
            output = super().forward(*args, **kwargs)
            output.logits = 2 * output.logits
            return output

    return DoubledForSequenceClassification(CONFIGS["qwen2"][1])


def _scaled_attention_qwen2() -> nn.Module:
    from transformers.models.qwen2 import modeling_qwen2

    class ScaledAttention(modeling_qwen2.Qwen2Attention):
        # the same projections, another computation (as DiffLlama's or HunYuan's attention)
        __module__ = modeling_qwen2.__name__

        def forward(self, *args, **kwargs):
            output, weights = super().forward(*args, **kwargs)
            return 2 * output, weights

    model = transformers.Qwen2ForSequenceClassification(CONFIGS["qwen2"][1])
    for layer in model.model.layers:
        layer.self_attn.__class__ = ScaledAttention
    return model


def _pre_layer_norm_roberta() -> nn.Module:
    # RoBERTa-PreLayerNorm: BERT's modules, its layer norms before attention
    config = transformers.RobertaPreLayerNormConfig(**{**_configs_bert(), "vocab_size": VOCAB})
    return transformers.RobertaPreLayerNormForSequenceClassification(config)


def _soft_capped_gemma2() -> nn.Module:
    # Gemma 2's tanh on the scores, capped low so that random weights reach it: not taken for
    # Llama's attention, which would drop it
    config = transformers.Gemma2Config(
        **{**CONFIGS["gemma"][1].to_dict(), "model_type": "gemma2", "num_labels": 3},
        attn_logit_softcapping=0.5,
    )
    return transformers.Gemma2ForSequenceClassification(config)


@pytest.mark.parametrize(
    ("build", "note"),
    [
        (_doubled_qwen2, "built like Llama, but computes something else"),
        (_scaled_attention_qwen2, "built like Llama, but computes something else"),
        (_pre_layer_norm_roberta, "built like BERT, but computes something else"),
        (_soft_capped_gemma2, None),
    ],
    ids=["doubled_logits", "scaled_attention", "pre_layer_norm", "soft_capped_attention"],
)
def test_a_look_alike_that_computes_otherwise_runs_its_own_code(build, note):
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = randomise_text(build())
    ids, mask = batch()
    same, report = bcosify.convert(model, b=1.0, keep_bias=True)
    assert same.config.own_code
    if note is not None:
        assert any(note in line and "its own code runs" in line for line in report.notes)
    with torch.no_grad():
        reference = model(input_ids=ids, attention_mask=mask).logits
        torch.testing.assert_close(same(ids, mask), reference, rtol=1e-4, atol=1e-6)
    converted_model = keep_signal_alive(bcosify.convert(model)[0], ids)
    with torch.no_grad():  # the class each text's tokens move most from the logit bias
        target = (converted_model(ids, mask) - converted_model.logit_bias.bias).abs().argmax(1)
    e = explain_tokens(converted_model, ids, mask, target=target)
    assert (e.residual.abs() <= 1e-4 * assert_signal(e)).all(), e.residual


def _configs_bert() -> dict[str, int]:
    return {
        "hidden_size": 16,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 32,
        "max_position_embeddings": 32,
        "pad_token_id": PAD,
    }
