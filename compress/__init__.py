"""Architectural efficiency: MPO decomposition and depth scaling (installed as ``plmkit.compress``).

Public API (imported lazily, so ``plmkit --help`` stays fast):

* ``mpo_decompose``, ``MPO``, ``factorize`` - canonical MPO of a matrix with exact truncation errors
* ``MPOLinear`` - an ``nn.Linear`` held as MPO cores (dense or factored forward, freezing, adapter)
* ``MPOConfig``, ``attach_mpo`` - compress a Hugging Face encoder or decoder (Llama, GPT-2) to a parameter budget
* ``save_mpo_model``, ``load_mpo_model``, ``export_dense`` - folders, round trips, plain HF export
* ``DeepMPOConfig``, ``build_deep_mpo`` - deeper encoders with shared central tensors
* ``distillation_loss`` - fine-tune a compressed model against its dense original
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "MPO": "mpo", "mpo_decompose": "mpo", "factorize": "mpo", "MPOShapeError": "mpo",
    "MPOLinear": "mpo_linear",
    "MPOConfig": "mpo_model", "attach_mpo": "mpo_model", "MPOHandle": "mpo_model",
    "save_mpo_model": "mpo_io", "load_mpo_model": "mpo_io", "export_dense": "mpo_io", "MPOLoadError": "mpo_io",
    "DeepMPOConfig": "mpo_depth", "build_deep_mpo": "mpo_depth",
    "fit_shared_mpo": "mpo_share",
    "distillation_loss": "distill",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'plmkit.compress' has no attribute {name!r}")
    return getattr(importlib.import_module(f"plmkit.compress.{_EXPORTS[name]}"), name)
