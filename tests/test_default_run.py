"""What the default transfer run reports: the baseline adapter and gains, weak sources, early-stopped sources."""

from __future__ import annotations

import json
import random

import pandas as pd
import pytest

from plmkit.cli import main
from plmkit.models import build_classifier
from plmkit.mtl.adapters import KIND, AdapterConfig, load_adapter
from plmkit.mtl.stage1 import WEAK_MARGIN, constant_baseline, source_quality, train_source
from plmkit.tasks import load_task, task_from_frames
from plmkit.textclf import TaskData
from plmkit.trainer import TrainerConfig
from tests.test_cli import _write_task

POSITIVE, NEGATIVE = ["great", "fun", "loved", "good"], ["bad", "awful", "boring", "hated"]


def _write_rows(folder, splits):
    """``splits``: split name -> list of labels; each text carries a word that gives its label away."""
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(1)
    for split, labels in splits.items():
        with open(folder / f"{split}.jsonl", "w") as handle:
            for i, label in enumerate(labels):
                word = rng.choice(POSITIVE if label else NEGATIVE)
                handle.write(json.dumps({"text": f"the film was {word} {i}", "label": label}) + "\n")
    return folder


def _frame(labels):
    return pd.DataFrame({"text": [f"text {i}" for i in range(len(labels))], "label": labels})


# ------------------------------------------------------------------------------ constant baselines
def test_majority_baseline_against_hand_counts():
    # training majority is 1 (6 of 10); validation holds 7 ones in 10 -> always-1 scores 0.7 accuracy
    task = task_from_frames("t", _frame([1] * 6 + [0] * 4), _frame([1] * 7 + [0] * 3), _frame([0, 1]))
    scores = constant_baseline(task)
    assert scores["accuracy"] == pytest.approx(0.7)
    assert scores["matthews_corr"] == 0.0
    assert scores["f1_macro"] == pytest.approx((2 * 0.7 / 1.7 + 0.0) / 2)  # F1 of class 1, class 0 never predicted


def test_constant_prediction_baseline_for_regression():
    train = pd.DataFrame({"text": ["a", "b", "c", "d"], "label": [0.0, 1.0, 2.0, 5.0]})
    task = task_from_frames("r", train, train, train, task_type="regression")
    scores = constant_baseline(task)
    assert scores[task.metric] == 0.0  # every correlation of a constant is 0


def test_weak_means_within_the_margin_of_the_baseline():
    task = task_from_frames("t", _frame([1] * 6 + [0] * 4), _frame([1] * 7 + [0] * 3), _frame([0, 1]))
    assert source_quality(task, {"accuracy": 0.7})["weak"]  # equal to the majority baseline
    assert source_quality(task, {"accuracy": 0.7 + WEAK_MARGIN / 2})["weak"]
    strong = source_quality(task, {"accuracy": 0.7 + 2 * WEAK_MARGIN})
    assert not strong["weak"] and strong["constant_baseline"] == pytest.approx(0.7)


# ------------------------------------------------------------------------------ the transfer table
def _transfer_args(tmp_path, backbone, sources, target, run, *extra):
    return ["transfer", "--sources", ",".join(str(s) for s in sources), "--target", str(target),
            "--backbone", str(backbone), "--store", str(tmp_path / "store"), "--epochs", "1",
            "--batch-size", "8", "--max-length", "16", "--no-progress", "--source-epochs", "1",
            "--no-save-checkpoints", "--output-dir", str(run), *extra]


def test_baseline_row_gain_column_and_weak_source(tmp_path, tiny_backbone_dir, capsys):
    good = _write_task(tmp_path / "src_good", n_train=24, n_eval=8)
    # validation holds the training majority only: always-majority scores 1.0, no source can beat it
    weak = _write_rows(tmp_path / "src_weak", {"train": [1, 1, 0] * 8, "validation": [1] * 8, "test": [1, 0] * 4})
    target = _write_task(tmp_path / "target", n_train=24, n_eval=8)
    run = tmp_path / "run"
    assert main(_transfer_args(tmp_path, tiny_backbone_dir, [good, weak], target, run,
                               "--method", "scalearn-uniform++", "--seeds", "1,2")) == 0
    out = capsys.readouterr().out
    assert "gain vs adapter" in out and "WEAK" in out and "constant baseline" in out

    metrics = json.loads((run / "metrics.json").read_text())
    assert [row["method"] for row in metrics["summary"]] == ["adapter", "scalearn-uniform++"]
    assert metrics["baseline"] == "adapter"
    adapter, method = metrics["summary"]
    assert adapter["gain"] == 0.0
    by_seed = {(r["method"], r["seed"]): r["test"]["accuracy"] for r in metrics["runs"]}
    hand = [by_seed[("scalearn-uniform++", s)] - by_seed[("adapter", s)] for s in (1, 2)]
    assert method["gain"] == pytest.approx(sum(hand) / 2)
    assert method["gain"] == pytest.approx(method["test_mean"] - adapter["test_mean"])

    quality = {q["name"]: q for q in metrics["source_quality"]}
    assert set(quality) == {"src_good", "src_weak", "target"}
    assert quality["src_weak"]["constant_baseline"] == 1.0 and quality["src_weak"]["weak"]
    assert "src_weak" in metrics["weak_sources"]
    stored = json.loads(next((tmp_path / "store").glob("*/adapter/src_weak/*/config.json")).read_text())
    assert quality["src_weak"]["validation"] == stored["validation"]["accuracy"]
    assert "src_weak validation accuracy" in (run / "run.log").read_text()

    # --no-baseline: one row, no gain column; the stored sources are reused
    run2 = tmp_path / "run2"
    assert main(_transfer_args(tmp_path, tiny_backbone_dir, [good, weak], target, run2,
                               "--method", "scalearn-uniform++", "--seeds", "1", "--no-baseline")) == 0
    out = capsys.readouterr().out
    metrics2 = json.loads((run2 / "metrics.json").read_text())
    assert [row["method"] for row in metrics2["summary"]] == ["scalearn-uniform++"]
    assert "gain" not in metrics2["summary"][0] and metrics2["baseline"] is None and "gain vs" not in out
    assert metrics2["runs"][0]["test"] == next(r["test"] for r in metrics["runs"]
                                               if r["method"] == "scalearn-uniform++" and r["seed"] == 1)


# ------------------------------------------------------------------------------ early-stopped sources
def test_early_stopping_keeps_the_best_source_weights(tmp_path, make_encoder):
    """Validation labels are the training labels flipped: the better the source fits its training
    data, the worse it scores on validation, so the best evaluation comes before the last one."""
    labels = [i % 2 for i in range(32)]
    folder = _write_rows(tmp_path / "flipped", {"train": labels, "validation": [1 - y for y in labels[:16]],
                                                "test": labels[:16]})
    task = load_task(str(folder))
    backbone = make_encoder("bert")
    trainer = TrainerConfig(output_dir=str(tmp_path / "train"), epochs=8, batch_size=8, learning_rate=1e-2,
                            early_stopping_patience=2, save_checkpoints=False, progress=False, seed=0)
    result = train_source(backbone.model, backbone, task, KIND, AdapterConfig(reduction_factor=4), trainer,
                          tmp_path / "adapter", max_length=16)
    train = result.metrics["train"]
    history = [h["accuracy"] for h in train["history"]]
    assert train["stopped_early"] and len(history) < 8
    assert max(history) > history[-1]  # the last evaluation is not the best one
    assert train["best_metric"] == max(history)

    fresh = make_encoder("bert")
    _, meta, head = load_adapter(tmp_path / "adapter", fresh.model)
    classifier = build_classifier(fresh.model, task.num_labels)
    classifier.head.load_state_dict(head)
    reloaded = TaskData(task, fresh.tokenizer, 16).evaluate(classifier, "validation")["accuracy"]
    assert reloaded == pytest.approx(max(history)) and meta["validation"]["accuracy"] == pytest.approx(max(history))


def test_full_ignores_every_sample_limit():
    from plmkit.mtl.pipeline import TransferSetup

    setup = TransferSetup(max_train_samples=300, max_eval_samples=0, source_max_train_samples=1000,
                          source_max_eval_samples=200)
    assert setup.limits(source=False) == (300, None) and setup.limits(source=True) == (1000, 200)
    assert TransferSetup(full=True, max_train_samples=300).limits(source=False) == (None, None)
    assert TransferSetup(full=True).limits(source=True) == (None, None)


def test_the_targets_own_module_trains_on_the_targets_split_only(tmp_path, tiny_backbone_dir, monkeypatch):
    """No method may see more target labels than the baseline: the target's stage-1 adapter uses the
    target's sample limits (10 here), a source the source limits (20); the target's module trains on
    the baseline's schedule (the stage-2 epochs, no early stopping), a source on the source budget."""
    import plmkit.mtl.pipeline as pipeline

    seen, schedules, real = {}, {}, pipeline.train_source

    def recording(model, backbone, task, kind, config, trainer, *args, **kwargs):
        seen[task.name] = len(task.train)
        schedules[task.name] = (trainer.epochs, trainer.early_stopping_patience)
        return real(model, backbone, task, kind, config, trainer, *args, **kwargs)

    monkeypatch.setattr(pipeline, "train_source", recording)
    source = _write_task(tmp_path / "src", n_train=24, n_eval=8)
    target = _write_task(tmp_path / "target", n_train=24, n_eval=8)
    assert main(_transfer_args(tmp_path, tiny_backbone_dir, [source], target, tmp_path / "run",
                               "--method", "scalearn", "--seeds", "1", "--no-baseline",
                               "--max-train-samples", "10", "--source-max-train-samples", "20",
                               "--epochs", "3", "--source-epochs", "1", "--source-patience", "1")) == 0
    assert seen == {"src": 20, "target": 10}
    assert schedules == {"src": (1, 1), "target": (3, None)}
