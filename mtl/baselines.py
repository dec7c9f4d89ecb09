"""The baselines every transfer table carries: a single adapter on the target, and full fine-tuning.

Neither uses source modules: ``adapter`` attaches one fresh bottleneck adapter (bottleneck
hidden / reduction_factor) and trains it with the head; ``full`` trains every backbone weight.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from torch import nn

from plmkit.errors import ConfigError
from plmkit.mtl.adapters import AdapterConfig, AdapterHandle, attach_adapters
from plmkit.mtl.registry import TransferMethod, register_transfer_method


@dataclass
class AdapterBaselineConfig:
    default_learning_rate: ClassVar[float] = 1e-3
    cli_flags: ClassVar[dict[str, str]] = {"reduction_factor": "reduction_factor"}

    reduction_factor: int = 16
    """Bottleneck of the target adapter: hidden / reduction_factor."""

    def __post_init__(self) -> None:
        if self.reduction_factor < 1:
            raise ConfigError(f"reduction_factor must be >= 1, got {self.reduction_factor}")


@dataclass
class FullFineTuningConfig:
    default_learning_rate: ClassVar[float] = 2e-5
    cli_flags: ClassVar[dict[str, str]] = {}


def attach_adapter_baseline(model: nn.Module, config: AdapterBaselineConfig) -> AdapterHandle:
    return attach_adapters(model, AdapterConfig(reduction_factor=config.reduction_factor))


def attach_nothing(model: nn.Module, config: FullFineTuningConfig) -> None:
    return None  # every backbone weight trains


register_transfer_method(TransferMethod("adapter", AdapterBaselineConfig, attach=attach_adapter_baseline,
                                        source_kinds=()))
register_transfer_method(TransferMethod("full", FullFineTuningConfig, attach=attach_nothing, source_kinds=()))
