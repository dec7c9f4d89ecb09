"""Run folders: every CLI job writes its resolved config, metrics, weights, plots and log to one place.

One folder holds one run. A new run into a folder that already holds something is refused unless
``--overwrite`` (which empties it first); ``--resume`` continues the run that is there, and the first
time the resumed job writes ``config.json`` its resolved settings are compared with the stored ones:
any difference that changes the result (task and its data fingerprint, backbone, method, learning
rate, seed, ...) is refused with the differing fields named, so a folder never mixes one run's
config with another's metrics.
"""

from __future__ import annotations

import json
import logging
import platform
import shutil
import sys
import time
from importlib import metadata
from pathlib import Path
from typing import Any

from plmkit import distributed
from plmkit.errors import ConfigError, PlmkitError
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


VOLATILE_SETTINGS = frozenset({
    "environment", "trainer.resume", "trainer.output_dir", "trainer.progress", "trainer.num_workers",
    "trainer.log_every_steps", "trainer.save_checkpoints", "trainer.keep_checkpoints", "trainer.cpu_shm_comm",
})
"""Settings that do not change a run's result: they may differ between a run and its resumption."""


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for key, item in value.items():
            out.update(_flatten(item, f"{prefix}.{key}" if prefix else str(key)))
        return out
    return {prefix: value}


def settings_differences(stored: dict[str, Any], current: dict[str, Any]) -> list[str]:
    """``field: stored -> current`` for every result-changing setting that differs."""
    def volatile(key: str) -> bool:
        return any(key == v or key.startswith(v + ".") for v in VOLATILE_SETTINGS)

    old, new = _flatten(json.loads(json.dumps(stored, default=str))), _flatten(json.loads(json.dumps(current, default=str)))
    keys = sorted(k for k in set(old) | set(new) if not volatile(k) and old.get(k) != new.get(k))
    return [f"{k}: {old.get(k, '(unset)')!r} -> {new.get(k, '(unset)')!r}" for k in keys]


class RunFolder:
    """One folder per job: ``config.json``, ``metrics.json``, weights, plots and ``run.log``."""

    def __init__(self, path: str | Path, resume: bool = False) -> None:
        self.path = Path(path)
        self.path.mkdir(parents=True, exist_ok=True)
        self.resume = resume
        self._handler: logging.Handler | None = None

    @classmethod
    def create(cls, job: str, output_dir: str | None = None, label: str = "", resume: bool = False,
               overwrite: bool = False) -> RunFolder:
        """``output_dir``, or ``runs/<job>/<time>-<label>``; every rank gets rank 0's folder.

        A non-empty ``output_dir`` is refused unless ``resume`` (continue the run in it) or
        ``overwrite`` (empty it first).
        """
        if output_dir:
            cls._claim(Path(output_dir), resume, overwrite)
            return cls(output_dir, resume=resume)
        suffix = f"-{label}" if label else ""
        path = distributed.broadcast_object(str(Path("runs") / job / f"{time.strftime('%Y%m%d-%H%M%S')}{suffix}"))
        return cls(path, resume=resume)

    @staticmethod
    def _claim(path: Path, resume: bool, overwrite: bool) -> None:
        if path.exists() and not path.is_dir():
            raise ConfigError(f"--output-dir {path} is a file; name a folder")
        if not path.is_dir() or not any(path.iterdir()) or resume:
            return
        if not overwrite:
            raise ConfigError(f"--output-dir {path} already holds a run; pass --resume to continue it, "
                              "--overwrite to replace it, or choose another folder")
        distributed.barrier()
        if distributed.is_main_process():
            for entry in path.iterdir():
                if entry.is_dir() and not entry.is_symlink():
                    shutil.rmtree(entry)
                else:
                    entry.unlink()
        distributed.barrier()
        logger.info("--overwrite: emptied %s", path)

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

    def record_failure(self, error: BaseException) -> None:
        """Write why the job stopped into ``run.log`` only (the CLI reports it on the console)."""
        if self._handler is None:
            return
        if isinstance(error, KeyboardInterrupt):
            message, exc_info = "interrupted; rerun with --resume to continue from the last checkpoint", None
        elif isinstance(error, PlmkitError):
            message, exc_info = f"error: {error}", None
        else:
            message, exc_info = "the job failed with an unexpected error", (type(error), error, error.__traceback__)
        record = logger.makeRecord(logger.name, logging.ERROR, __file__, 0, message, (), exc_info)
        self._handler.handle(record)

    def write_config(self, data: dict[str, Any]) -> Path:
        """Write ``config.json``; when resuming, first refuse settings that differ from the stored ones."""
        stored = self.path / "config.json"
        if self.resume and stored.is_file():
            try:
                previous = json.loads(stored.read_text())
            except json.JSONDecodeError as error:
                raise ConfigError(f"{stored} is damaged ({error}); it cannot be checked for --resume. "
                                  "Start the run again with --overwrite") from error
            differences = settings_differences(previous, data)
            if differences:
                raise ConfigError(
                    f"--resume: the run in {self.path} was made with other settings; refusing to mix two runs "
                    "in one folder. Differences (stored -> now): " + "; ".join(differences)
                    + ". Resume with the original settings, or start a new run (another --output-dir, or --overwrite)")
        return self.write_json("config.json", data, _checked=True)

    def write_json(self, name: str, data: dict[str, Any], _checked: bool = False) -> Path:
        if name == "config.json" and not _checked:
            return self.write_config(data)  # every job's config goes through the resume check
        target = self.path / name
        if distributed.is_main_process():
            atomic_write_json(target, data)
        return target
