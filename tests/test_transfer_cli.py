"""End-to-end ``plmkit transfer`` on a tiny random backbone and small task folders."""

from __future__ import annotations

import json

import pytest
import torch

from plmkit.backbones import load_encoder
from plmkit.cli import main
from plmkit.models import build_classifier
from plmkit.mtl.transfer import load_transfer
from plmkit.tasks import load_task
from plmkit.textclf import TaskData
from tests.test_cli import _write_task


def _args(tmp_path, backbone, *extra):
    sources = ",".join(str(_write_task(tmp_path / name)) for name in ("src_a", "src_b"))
    target = _write_task(tmp_path / "target")
    return ["transfer", "--sources", sources, "--target", str(target), "--backbone", str(backbone),
            "--store", str(tmp_path / "store"), "--epochs", "2", "--batch-size", "8", "--max-length", "32",
            "--no-progress", "--source-epochs", "1", *extra]


def test_transfer_compare_end_to_end(tmp_path, tiny_backbone_dir, capsys):
    run = tmp_path / "run"
    code = main(_args(tmp_path, tiny_backbone_dir, "--compare", "scalearn,scalearn-uniform++,fusion,adapter,full",
                      "--seeds", "1,2", "--output-dir", str(run)))
    assert code == 0
    out = capsys.readouterr().out
    for method in ("scalearn", "scalearn-uniform++", "fusion", "adapter", "full"):
        assert method in out
    metrics = json.loads((run / "metrics.json").read_text())
    summary = {row["method"]: row for row in metrics["summary"]}
    assert summary["scalearn"]["transfer_parameters"] == 3 * 32 * 2  # 3 sources x hidden x layers
    assert summary["scalearn-uniform++"]["transfer_parameters"] == 3
    assert summary["fusion"]["transfer_parameters"] == 2 * (3 * 32 * 32 + 2 * 32)
    assert summary["scalearn"]["seeds"] == [1, 2] and len(metrics["runs"]) == 10
    assert metrics["sources"][-1].endswith("target")  # the target's own adapter comes last
    for name in ("source_weights_scalearn.png", "source_weights_fusion.png", "model-scalearn/config.json",
                 "model-adapter/config.json", "config.json", "run.log"):
        assert (run / name).is_file(), name
    stored = sorted(p.parent.parent.name for p in (tmp_path / "store").rglob("weights.safetensors"))
    assert stored == ["src_a", "src_b", "target"]

    # the saved stage-2 setup reloads onto a fresh backbone and reproduces the reported test metric
    backbone = load_encoder(str(tiny_backbone_dir))
    handle, meta, head = load_transfer(run / "model-scalearn", backbone.model, backbone_name=str(tiny_backbone_dir))
    classifier = build_classifier(backbone.model, 2)
    classifier.head.load_state_dict(head)
    task = load_task(str(tmp_path / "target"))
    accuracy = TaskData(task, backbone.tokenizer, 32).evaluate(classifier, "test")["accuracy"]
    first = next(r for r in metrics["runs"] if r["method"] == "scalearn" and r["seed"] == 1)
    assert accuracy == pytest.approx(first["test"]["accuracy"])
    assert meta["composition"]["sources"][0]["key"]


def test_second_run_reuses_the_store(tmp_path, tiny_backbone_dir):
    assert main(_args(tmp_path, tiny_backbone_dir, "--output-dir", str(tmp_path / "r1"))) == 0
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "store").rglob("weights.safetensors")}
    assert main(_args(tmp_path, tiny_backbone_dir, "--method", "fusion", "--output-dir", str(tmp_path / "r2"))) == 0
    after = {p: p.stat().st_mtime_ns for p in (tmp_path / "store").rglob("weights.safetensors")}
    assert before == after and len(after) == 3
    assert "reusing" in (tmp_path / "r2" / "run.log").read_text()
    assert not (tmp_path / "r2" / "stage1").exists()


def test_unknown_method_and_missing_source(tmp_path, tiny_backbone_dir, capsys):
    assert main(_args(tmp_path, tiny_backbone_dir, "--method", "lora", "--output-dir", str(tmp_path / "r"))) == 2
    assert "lora" in capsys.readouterr().err
    args = _args(tmp_path, tiny_backbone_dir, "--output-dir", str(tmp_path / "r3"))
    args[args.index("--sources") + 1] = str(tmp_path / "nowhere.jsonl")
    assert main(args) == 2
    assert "nowhere.jsonl" in capsys.readouterr().err


def test_transfer_weights_learn_something(tmp_path, tiny_backbone_dir):
    """ScaLearn's scales move away from their init during training."""
    run = tmp_path / "run"
    assert main(_args(tmp_path, tiny_backbone_dir, "--output-dir", str(run))) == 0
    from safetensors.torch import load_file

    scales = load_file(str(run / "model-scalearn" / "weights.safetensors"))["transfer.layers.0.scales"]
    assert torch.all(scales.abs() < 10) and (scales - 2 / 3).abs().max() > 1e-2
