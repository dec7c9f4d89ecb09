"""The recipes of docs/architecture.md, run as written: a stage-1 kind and a job defined here alone.

(The third recipe, a stage-2 method, is ``tests/test_registry.py::test_a_method_registered_in_a_test_runs_end_to_end``.)
"""

from __future__ import annotations

import argparse
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from torch import nn

from plmkit.backbones import load_encoder
from plmkit.cliargs import add_common, add_dataclass_arguments, build_dataclass, parse_with_config
from plmkit.handles import Handle
from plmkit.jobs import DataArgs, run_job
from plmkit.mtl.registry import SourceKind, register_source_kind, source_kind
from plmkit.mtl.stage1 import train_source
from plmkit.mtl.store import AdapterStore
from plmkit.saving import check_backbone, read_module_folder
from plmkit.sites import find_feed_forward_sites, install_block
from plmkit.trainer import TrainerConfig
from tests.test_cli import _write_task


# ------------------------------------------------------------------------------ recipe 1: a stage-1 kind
@dataclass
class BiasConfig:
    scale: float = 1.0
    """Multiplies the learnt per-layer shift."""


class BiasBlock(nn.Module):
    """o = r + scale · b: one learnt vector per layer at the feed-forward site."""

    def __init__(self, hidden: int, scale: float) -> None:
        super().__init__()
        self.scale = scale
        self.shift = nn.Parameter(torch.zeros(hidden))

    def forward(self, adapter_input: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return residual + self.scale * self.shift


class BiasHandle(Handle):
    format, prefix = "plmkit-bias", "bias"

    def __init__(self, model, config, sites, blocks, frozen) -> None:
        super().__init__(model, sites, blocks, frozen)
        self.config = config

    def meta(self) -> dict:
        return {"bias": {"scale": self.config.scale}}


def attach_bias(model: nn.Module, config: BiasConfig) -> BiasHandle:
    frozen = [p for p in model.parameters() if p.requires_grad]
    for param in frozen:
        param.requires_grad_(False)
    sites, blocks = find_feed_forward_sites(model), []
    for site in sites:
        block = BiasBlock(model.config.hidden_size, config.scale)
        install_block(site, block)
        blocks.append(block)
    return BiasHandle(model, config, sites, blocks, frozen)


def save_bias(path, handle, head=None, backbone_name="", extra=None) -> Path:
    return handle.save(path, head=head, backbone_name=backbone_name, extra=extra)


def read_bias(path, model, source, backbone_name=""):
    meta, groups = read_module_folder(path, BiasHandle.format, "bias module")
    check_backbone(meta, model, source, backbone_name)
    return BiasConfig(**meta["bias"]), groups["bias"]


def load_bias(path, model, backbone_name=""):
    config, tensors = read_bias(path, model, str(path), backbone_name)
    handle = attach_bias(model, config)
    handle.load_state_dict(tensors, source=str(path))
    return handle, {"bias": config}, read_module_folder(path, BiasHandle.format, "bias module")[1].get("head", {})


def stack_bias(config: BiasConfig, tensors: list[dict[str, torch.Tensor]], layer: int) -> torch.Tensor:
    return torch.stack([t[f"layers.{layer}.shift"] for t in tensors])  # (N, hidden)


@pytest.fixture
def bias_kind():
    register_source_kind(SourceKind("bias", BiasConfig, attach=attach_bias, save=save_bias, load=load_bias,
                                    read=read_bias, stack=stack_bias))
    return source_kind("bias")


def test_a_stage1_kind_defined_here_trains_stores_lists_and_reloads(bias_kind, tiny_backbone_dir, tmp_path):
    from plmkit.tasks import load_task

    backbone = load_encoder(str(tiny_backbone_dir))
    task = load_task(str(_write_task(tmp_path / "task")))
    trainer = TrainerConfig(output_dir=str(tmp_path / "train"), epochs=2, batch_size=8, learning_rate=1e-2,
                            progress=False, save_checkpoints=False)
    result = train_source(backbone.model, backbone, task, "bias", BiasConfig(), trainer, tmp_path / "out",
                          max_length=32)
    shifts = [block.shift.detach().clone() for block in result.handle.blocks]
    assert all(s.abs().sum() > 0 for s in shifts)  # it trained
    assert [n for n, p in result.classifier.named_parameters() if p.requires_grad and "head" not in n] == [
        f"encoder.encoder.layer.{i}.output.plmkit_block.shift" for i in range(2)]

    store = AdapterStore(tmp_path / "store")
    key = f"{backbone.name.replace('/', '_')}/bias/task/abc"
    store.put(key, tmp_path / "out")
    assert [e.kind for e in store.list(kind="bias")] == ["bias"]
    assert store.list(kind="adapter") == []

    fresh = load_encoder(str(tiny_backbone_dir))
    handle, _, _ = bias_kind.load(store.path(key), fresh.model)
    for block, shift in zip(handle.blocks, shifts, strict=True):
        torch.testing.assert_close(block.shift, shift)
    config, tensors = bias_kind.read(store.path(key), fresh.model, "stored bias")
    assert bias_kind.stack(config, [tensors, tensors], 1).shape == (2, 32)


# ------------------------------------------------------------------------------ recipe 3: a job
@dataclass
class CountSetup(DataArgs):
    task: str = "rotten-tomatoes"
    """The task whose training examples are counted."""


def count_job(setup: CountSetup, trainer: TrainerConfig, run) -> dict:
    task = setup.load(setup.task)
    run.write_config({"job": "count", "setup": vars(setup), "task": task.describe()})
    metrics = {"task": task.name, "train_examples": len(task.train), "metric": task.metric}
    run.write_json("metrics.json", metrics)
    return metrics


def _count_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="plmkit")
    sub = parser.add_subparsers(dest="command", required=True)
    count = sub.add_parser("count")
    add_common(count)
    add_dataclass_arguments(count, CountSetup, title="task")
    add_dataclass_arguments(count, TrainerConfig, title="training", defaults={"output_dir": None})

    def cmd(args: argparse.Namespace) -> int:
        setup = build_dataclass(CountSetup, args)
        return run_job(args, "count", Path(setup.task).name, lambda trainer, run: count_job(setup, trainer, run),
                       lambda metrics, path: print(f"{metrics['train_examples']} examples; run folder {path}"))

    count.set_defaults(func=cmd, _parser=count)
    return parser


def test_a_job_defined_here_gets_run_folder_checks_and_summary(tmp_path, capsys):
    task = _write_task(tmp_path / "task")
    out = tmp_path / "run"

    def run(*extra):
        args = parse_with_config(_count_parser(), ["count", "--task", str(task), "--output-dir", str(out), *extra])
        return args.func(args)

    assert run("--max-train-samples", "20") == 0
    assert "20 examples" in capsys.readouterr().out
    assert json.loads((out / "metrics.json").read_text())["train_examples"] == 20
    from plmkit.errors import ConfigError

    with pytest.raises(ConfigError, match="already holds a run"):
        run()
    with pytest.raises(ConfigError, match="setup.max_train_samples"):
        run("--resume", "--max-train-samples", "10")
    assert run("--resume", "--max-train-samples", "20") == 0


def test_the_recipes_name_tests_that_exist():
    """docs/architecture.md points at the tests that check each recipe; they must exist."""
    import re

    root = Path(__file__).resolve().parents[1]
    doc = (root / "docs" / "architecture.md").read_text()
    names = re.findall(r"`tests/(test_\w+\.py)::(test_\w+)`", doc)
    assert len(names) == 3
    for module, test in names:
        assert f"def {test}(" in (root / "tests" / module).read_text(), (module, test)
