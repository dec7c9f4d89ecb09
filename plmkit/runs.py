"""Run folders: every CLI job writes its resolved config, metrics, weights, plots and log to one place."""

from __future__ import annotations

import logging
import platform
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from plmkit import distributed
from plmkit.io import atomic_write_json

logger = logging.getLogger("plmkit")


def environment() -> dict[str, Any]:
    """Versions and hardware, so a result can be traced to what produced it."""
    import torch

    versions = {}
    for package in ("plmkit", "torch", "transformers", "datasets", "deepspeed"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    device = torch.cuda.get_device_name(0) if torch.cuda.is_available() else f"cpu ({torch.get_num_threads()} threads)"
    return {"python": platform.python_version(), "versions": versions, "device": device,
            "world_size": distributed.world_size(), "command": " ".join(sys.argv)}


class RunFolder:
    """One folder per job: ``config.json``, ``metrics.json``, weights, plots and ``run.log``."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self._handler: logging.Handler | None = None

    @classmethod
    def create(cls, job: str, output_dir: str | None = None, label: str = "") -> RunFolder:
        """``output_dir``, or ``runs/<job>/<time>-<label>``; every rank gets rank 0's folder."""
        if output_dir:
            return cls(output_dir)
        suffix = f"-{label}" if label else ""
        path = [str(Path("runs") / job / f"{time.strftime('%Y%m%d-%H%M%S')}{suffix}")]
        if distributed.world_size() > 1:
            import torch

            distributed.init_process_group()
            torch.distributed.broadcast_object_list(path, src=0)
        return cls(path[0])

    def start_log(self, verbose: bool = True) -> None:
        """Log to ``run.log`` (and to stderr) from the main process."""
        logger.setLevel(logging.INFO)
        if not distributed.is_main_process():
            return
        self._handler = logging.FileHandler(self.path / "run.log", encoding="utf-8")
        self._handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
        logger.addHandler(self._handler)
        if verbose and not any(getattr(h, "_plmkit_console", False) for h in logger.handlers):
            console = logging.StreamHandler(sys.stderr)
            console.setFormatter(logging.Formatter("%(message)s"))
            console._plmkit_console = True  # type: ignore[attr-defined]
            logger.addHandler(console)

    def stop_log(self) -> None:
        if self._handler is not None:
            logger.removeHandler(self._handler)
            self._handler.close()
            self._handler = None

    def write_json(self, name: str, data: dict[str, Any]) -> Path:
        target = self.path / name
        if distributed.is_main_process():
            atomic_write_json(target, data)
        return target
