"""Registries of stage-1 kinds and stage-2 methods: the pipeline, store, saving and CLI look them up.

A **stage-1 kind** (the bottleneck adapter; soft prompts later) says how to attach one module to a
backbone, how to read a saved one without a model, and how N stored sources of that kind become the
stacked frozen module a stage-2 method consumes at one layer (``stack``).

A **stage-2 method** (fusion, the ScaLearn family, the ``adapter`` / ``full`` baselines) names its
config class — a dataclass that carries ``default_learning_rate`` and ``cli_flags`` (config field ->
CLI flag name) as class variables — and either ``build_block`` (one block per layer over the stacked
sources; ``shared`` is a dict kept for one attach call, where a block may leave what later layers
share) or ``attach`` (a baseline that needs no sources). Each registers itself at the bottom of its
own file; adding a method is one file plus one ``register_transfer_method`` call.
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from plmkit.errors import ConfigError

BUILTIN_MODULES = ("plmkit.mtl.adapters", "plmkit.mtl.baselines", "plmkit.mtl.fusion", "plmkit.mtl.scalearn",
                   "plmkit.mtl.prompts", "plmkit.mtl.panda")
"""Modules whose bottom lines register the built-in kinds and methods (imported on first look-up)."""


@dataclass(frozen=True)
class SourceKind:
    """A stage-1 kind: how to attach, save, read and stack modules of this kind."""

    name: str
    config_class: type
    attach: Callable[..., Any]
    """``attach(model, config) -> Handle`` (freezes the backbone)."""
    save: Callable[..., Any]
    """``save(path, handle, head=None, backbone_name="", extra=None) -> Path``."""
    load: Callable[..., Any]
    """``load(path, model, backbone_name="") -> (handle, meta, head tensors)``."""
    read: Callable[..., Any]
    """``read(path, model, source) -> (config, tensors)``: checked against ``model``, no attach."""
    stack: Callable[..., Any]
    """``stack(config, [tensors of each source], layer_index) -> nn.Module`` (frozen, stacked)."""


@dataclass(frozen=True)
class TransferMethod:
    """A stage-2 method (or a baseline) as the pipeline sees it."""

    name: str
    config_class: type
    build_block: Callable[..., Any] | None = None
    """``build_block(stacked_sources, config, shared: dict) -> nn.Module`` per layer."""
    attach: Callable[..., Any] | None = None
    """For methods without sources: ``attach(model, config) -> Handle | None``."""
    fixed: dict[str, Any] = field(default_factory=dict)
    """Config fields the method's name fixes (a ScaLearn variant)."""
    source_kinds: tuple[str, ...] = ("adapter",)
    """Stage-1 kinds it can compose."""
    weights_label: str = "mean weight"
    """What ``source_weights`` means, for the heat map's colour bar."""
    run: Callable[..., Any] | None = None
    """For methods that train more than one model per seed (a teacher, then a student):
    ``run(method, seed, refs, backbone, data, setup, base, run_folder, outcomes) -> outcome`` (the keys
    of ``pipeline.run_method``'s result), training only through the core trainer; ``outcomes`` holds
    this run's earlier outcomes (a teacher may be reused from them)."""

    def __post_init__(self) -> None:
        if sum(f is not None for f in (self.build_block, self.attach, self.run)) != 1:
            raise ConfigError(f"stage-2 method {self.name!r} needs exactly one of build_block, attach and run")

    @property
    def uses_sources(self) -> bool:
        return self.build_block is not None or (self.run is not None and bool(self.source_kinds))

    @property
    def default_learning_rate(self) -> float:
        return float(getattr(self.config_class, "default_learning_rate", 1e-3))

    def cli_flags(self) -> dict[str, str]:
        """Config field -> flag destination (``fusion_value`` is ``--fusion-value``)."""
        return dict(getattr(self.config_class, "cli_flags", {}))

    def make_config(self, options: dict[str, Any] | None = None) -> Any:
        """The config from flag values (keys are flag destinations); unset flags keep field defaults."""
        options = options or {}
        values = {name: options[flag] for name, flag in self.cli_flags().items() if flag in options}
        return self.config_class(**values, **self.fixed)

    def check_config(self, config: Any) -> None:
        if not isinstance(config, self.config_class):
            raise ConfigError(f"method {self.name!r} takes a {self.config_class.__name__}, "
                              f"got a {type(config).__name__}")
        for name, value in self.fixed.items():
            if getattr(config, name) != value:
                raise ConfigError(f"method {self.name!r} but {name} {getattr(config, name)!r} in its config")

    def config_from_dict(self, data: dict[str, Any]) -> Any:
        names = {f.name for f in dataclasses.fields(self.config_class)}
        return self.config_class(**{k: v for k, v in data.items() if k in names})


_KINDS: dict[str, SourceKind] = {}
_METHODS: dict[str, TransferMethod] = {}
_loaded = False


def _load_builtins() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        for module in BUILTIN_MODULES:
            importlib.import_module(module)


def register_source_kind(kind: SourceKind) -> SourceKind:
    _KINDS[kind.name] = kind
    return kind


def register_transfer_method(method: TransferMethod) -> TransferMethod:
    """Add (or replace) a stage-2 method; returns it."""
    _METHODS[method.name] = method
    return method


def unregister_transfer_method(name: str) -> None:
    _METHODS.pop(name, None)


def source_kind(name: str) -> SourceKind:
    _load_builtins()
    if name not in _KINDS:
        raise ConfigError(f"unknown stage-1 kind {name!r}; choose one of {', '.join(_KINDS)}")
    return _KINDS[name]


def transfer_method(name: str) -> TransferMethod:
    _load_builtins()
    if name not in _METHODS:
        raise ConfigError(f"unknown transfer method {name!r}; choose one of {', '.join(_METHODS)}")
    return _METHODS[name]


def transfer_methods() -> dict[str, TransferMethod]:
    """Every registered method by name: built-ins in ``BUILTIN_MODULES`` order (baselines first), then others."""
    _load_builtins()

    def rank(name: str) -> int:
        module = _METHODS[name].config_class.__module__
        return BUILTIN_MODULES.index(module) if module in BUILTIN_MODULES else len(BUILTIN_MODULES)

    return {name: _METHODS[name] for name in sorted(_METHODS, key=rank)}  # sorted() is stable


def source_kinds() -> dict[str, SourceKind]:
    _load_builtins()
    return dict(_KINDS)
