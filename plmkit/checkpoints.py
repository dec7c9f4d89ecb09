"""Checkpoint files the trainer can read back without executing anything.

- RNG states are JSON: python's ``random.getstate()`` tuple as lists, numpy's MT19937 state as a list,
  torch's (and CUDA's) byte-tensor state as base64.
- DeepSpeed's own files are pickles (``torch.save``). :func:`weights_only_loading` makes every
  ``torch.load`` inside it (DeepSpeed's included, which ask for ``weights_only=False``) use PyTorch's
  weights-only unpickler, with only the DeepSpeed classes those files need allow-listed. A pickle that
  would call anything else (``os.system`` through ``__reduce__``, say) is refused before it runs, with
  an :class:`UnsafeCheckpointError` naming the file.
- A checkpoint counts as good only if its trainable weights are sane (:func:`weights_are_sane`).
"""

from __future__ import annotations

import base64
import contextlib
import json
import pickle
import random
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch

from plmkit.errors import PlmkitError
from plmkit.io import atomic_write_text


class UnsafeCheckpointError(PlmkitError):
    """A checkpoint file holds pickled objects that could run code; it was not loaded."""


def _allowed_globals() -> list[Any]:
    """The non-tensor classes DeepSpeed writes into its checkpoint files (checked for 0.19)."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [ZeroStageEnum, LossScaler, DynamicLossScaler, fragment_address]


@contextlib.contextmanager
def weights_only_loading() -> Iterator[None]:
    """Within the block, ``torch.load`` never unpickles arbitrary objects, whatever its caller asks."""
    original = torch.load

    def load(f: Any, *args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        try:
            return original(f, *args, **kwargs)
        except pickle.UnpicklingError as error:
            reason = str(error).strip().splitlines()[-1] if str(error).strip() else type(error).__name__
            raise UnsafeCheckpointError(
                f"refused to load {f}: it holds pickled objects that could run code ({reason[:200]}); "
                "checkpoints are read weights-only. Delete that checkpoint folder or retrain without --resume"
            ) from None

    torch.load = load
    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            yield
    finally:
        torch.load = original


# ------------------------------------------------------------------------------------------- RNG
def rng_state() -> dict[str, Any]:
    """Every random generator's state as JSON-safe data."""
    version, internal, gauss = random.getstate()
    name, keys, pos, has_gauss, cached = np.random.get_state()
    state = {
        "python": [version, list(internal), gauss],
        "numpy": [name, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": _b64(torch.get_rng_state()),
    }
    if torch.cuda.is_available():
        state["cuda"] = _b64(torch.cuda.get_rng_state())
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
    torch.set_rng_state(_unb64(state["torch"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(_unb64(state["cuda"]))


def save_rng(path: Path) -> None:
    atomic_write_text(path, json.dumps(rng_state()))


def load_rng(path: Path) -> None:
    set_rng_state(json.loads(path.read_text()))


def _b64(tensor: torch.Tensor) -> str:
    return base64.b64encode(tensor.numpy().tobytes()).decode("ascii")


def _unb64(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8)


# ------------------------------------------------------------------------------------ good weights
def weights_are_sane(tensors: Iterable[torch.Tensor]) -> bool:
    """True when every value is finite and the global sum of squares is finite in float32.

    Weights of about 1e19 and above overflow that sum (float32 tops out near 3.4e38); no trained network
    has such weights, they are the trace of a diverging run whose next forward pass yields inf or NaN.
    """
    total = torch.zeros((), dtype=torch.float32)
    for tensor in tensors:
        values = tensor.detach().float()
        if not torch.isfinite(values).all():
            return False
        total = total + values.square().sum().cpu()
    return bool(torch.isfinite(total))


# ------------------------------------------------------------------------------------------- log
def trim_log(path: Path, last_step: int) -> int:
    """Drop records of ``path`` (JSON lines) after ``last_step``; returns how many were dropped."""
    if not path.exists():
        return 0
    kept, dropped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        record = json.loads(line)
        step = record.get("step", record.get("eval", {}).get("step"))
        if step is not None and step > last_step:
            dropped += 1
        else:
            kept.append(line)
    if dropped:
        atomic_write_text(path, "".join(f"{line}\n" for line in kept))
    return dropped
