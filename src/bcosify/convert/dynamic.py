"""Classes made at conversion, and how pickle and ``copy`` make them again.

A converted module keeps its class's name, its ``isinstance`` and its own code, but some get a
class of their own: a subclass whose edited methods run traced graphs
(:func:`~bcosify.convert.tracing.install_methods`), or whose gate is detached
(:func:`~bcosify.convert.rules.squeeze_excitation`). Pickle finds a class by its name, and these
share their original's, so ``torch.save(model)`` of a whole converted model would fail. Each such
class is made by :func:`dynamic_class`, which records the factory and arguments that made it;
its instances pickle as "make that class again, then restore the state", and the arguments
themselves pickle by reference (functions, classes) or by value (generated source code, see
:class:`GeneratedCode`).
"""

from __future__ import annotations

import importlib
import linecache
import types
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import fx

__all__ = ["GeneratedCode", "dynamic_class"]

ClassFactory = Callable[..., type]


def dynamic_class(factory: ClassFactory, *args: Any) -> type:
    """``factory(*args)``, a class whose instances pickle (and deep-copy) by remaking it.

    ``factory`` must be a module-level function and ``args`` picklable; classes made by
    :func:`dynamic_class` may be among the arguments (a subclass of a subclass).

    Example:
        >>> import pickle, torch
        >>> from bcosify.convert.tracing import replace_methods  # made by dynamic_class
        >>> relu = torch.nn.ReLU()
        >>> replace_methods(relu, {"forward": torch.nn.Identity.forward})
        >>> type(relu).__name__, pickle.loads(pickle.dumps(relu))(torch.tensor([-1.0]))
        ('ReLU', tensor([-1.]))
    """
    cls = factory(*args)
    cls._bcosify_recipe = (factory, args)
    cls.__reduce_ex__ = _reduce_ex
    return cls


class _ClassRecipe:
    """A dynamic class as pickle carries it: the factory and the arguments that make it."""

    def __init__(self, cls: type) -> None:
        factory, args = cls.__dict__["_bcosify_recipe"]
        self.factory = factory
        self.args = tuple(_portable(a) for a in args)

    def make(self) -> type:
        return dynamic_class(self.factory, *(_made(a) for a in self.args))


def _portable(value: Any) -> Any:
    return _ClassRecipe(value) if isinstance(value, type) and _is_dynamic(value) else value


def _made(value: Any) -> Any:
    return value.make() if isinstance(value, _ClassRecipe) else value


def _is_dynamic(cls: type) -> bool:
    return "_bcosify_recipe" in cls.__dict__


def _reduce_ex(self: Any, protocol: int) -> tuple[Any, ...]:
    return (_new_instance, (_ClassRecipe(type(self)),), self.__dict__)


def _new_instance(recipe: _ClassRecipe) -> Any:
    cls = recipe.make()
    return cls.__new__(cls)


@dataclass(frozen=True)
class GeneratedCode:
    """The Python function torch.fx generates for a graph, in a form pickle can carry: its
    source and the global names it uses (modules by name, other values by reference).

    Example:
        >>> import torch
        >>> graph = torch.fx.symbolic_trace(torch.nn.ReLU()).graph
        >>> GeneratedCode.of(graph).function()(None, torch.tensor([-1.0, 2.0]))
        tensor([0., 2.])
    """

    source: str
    names: dict[str, Any]
    modules: dict[str, str]
    _compiled: list[Callable[..., Any]] = field(default_factory=list, compare=False, repr=False)

    @classmethod
    def of(cls, graph: fx.Graph) -> GeneratedCode:
        """The code of ``graph``, a function of ``self`` (the module) and the graph's inputs."""
        code = graph.python_code(root_module="self")
        names, modules = {}, {}
        for name, value in code.globals.items():
            if isinstance(value, types.ModuleType):
                modules[name] = value.__name__
            elif name != "__builtins__":
                names[name] = value
        source = code.src
        pytree = getattr(graph._codegen, "pytree_info", None)
        if pytree is not None:
            # arguments traced as pytrees (CoaT's ``size`` tuple): the code reads their specs
            # from the GraphModule it expects as ``self``; here they are its own globals
            for spec in ("in_spec", "out_spec"):
                source = source.replace(f"self._{spec}", f"_bcosify_{spec}")
                names[f"_bcosify_{spec}"] = getattr(pytree, spec)
        return cls(source, names, modules)

    def function(self) -> Callable[..., Any]:
        """The compiled function (compiled once per object)."""
        if not self._compiled:
            namespace = dict(self.names)
            namespace.update({k: importlib.import_module(m) for k, m in self.modules.items()})
            filename = f"<bcosify converted method {id(self):x}>"
            # in the line cache, tracebacks show the converted code, as for torch.fx's own
            linecache.cache[filename] = (
                len(self.source),
                None,
                self.source.splitlines(True),
                filename,
            )
            exec(compile(self.source, filename, "exec"), namespace)
            self._compiled.append(namespace["forward"])
        return self._compiled[0]

    def __getstate__(self) -> dict[str, Any]:
        return {"source": self.source, "names": self.names, "modules": self.modules}

    def __setstate__(self, state: dict[str, Any]) -> None:
        for key, value in {**state, "_compiled": []}.items():
            object.__setattr__(self, key, value)
