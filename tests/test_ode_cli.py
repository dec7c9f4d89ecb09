"""``plmkit compress ode`` end to end on the tiny random backbone and a small task folder."""

from __future__ import annotations

import json

import pytest
import torch

from plmkit.compress.ode_build import load_ode_model


@pytest.mark.slow  # three trainings (dense, shared, one dropped-layer model): ~90 s on the shared CPU
def test_ode_cli_writes_table_plot_and_a_model_that_reloads_with_any_steps(tmp_path, tiny_backbone_dir, capsys):
    from plmkit.cli import main
    from tests.test_cli import _write_task

    task = _write_task(tmp_path / "task")
    run = tmp_path / "ode"
    assert main(["compress", "ode", "--backbone", str(tiny_backbone_dir), "--task", str(task), "--depth", "4",
                 "--eval-steps", "4,2,1", "--epochs", "1", "--batch-size", "8", "--max-length", "16",
                 "--latency-batch", "2", "--latency-tokens", "8", "--output-dir", str(run), "--no-progress",
                 "--no-save-checkpoints"]) == 0
    out = capsys.readouterr().out
    assert "shared ODE (euler)" in out and "layer dropping" in out and "GFLOPs" in out
    table = json.loads((run / "ode_table.json").read_text())["rows"]
    ode = {row["steps"]: row for row in table if row["model"].startswith("shared")}
    drop = {row["steps"]: row for row in table if row["model"] == "layer dropping"}
    assert sorted(ode) == [1, 2, 4] and sorted(drop) == [1]  # the tiny backbone has 2 layers
    assert ode[4]["gflops"] > ode[2]["gflops"] > ode[1]["gflops"]
    assert abs(ode[1]["gflops"] - drop[1]["gflops"]) < 0.05 * drop[1]["gflops"]  # equal compute
    assert (run / "accuracy_latency.png").stat().st_size > 1000
    saved = json.loads((run / "predictions.json").read_text())  # one entry per table row, in its order
    assert [(r["model"], r["steps"]) for r in saved["rows"]] == [(r["model"], r["steps"]) for r in table]
    for row, predicted in zip(table, saved["rows"], strict=True):
        for split in ("validation", "test"):
            hits = [p == y for p, y in zip(predicted[split], saved["labels"][split], strict=True)]
            assert sum(hits) / len(hits) == pytest.approx(row[split])
    loaded = load_ode_model(run / "model", steps=2)
    batch = loaded.tokenizer(["the movie was great"], return_tensors="pt")
    with torch.no_grad():
        logits = loaded.model(batch["input_ids"], batch["attention_mask"])
    assert logits.shape == (1, 2) and loaded.model.encoder.last_evals == 2


@pytest.mark.slow  # three trainings (dense, shared, one dropped-layer model): ~40 s on the shared CPU
def test_ode_cli_trains_both_sides_with_trajectory_distillation_and_logs_its_terms(tmp_path, tiny_backbone_dir, capsys):
    from plmkit.cli import main
    from tests.test_cli import _write_task

    task = _write_task(tmp_path / "task")
    common = ["compress", "ode", "--backbone", str(tiny_backbone_dir), "--task", str(task), "--epochs", "1",
              "--batch-size", "8", "--max-length", "16", "--latency-batch", "2", "--latency-tokens", "8",
              "--no-progress", "--no-save-checkpoints", "--distill-trajectory", "0.5"]
    assert main([*common, "--depth", "4", "--output-dir", str(tmp_path / "deep")]) == 2
    assert "--depth 4 must equal its 2 layers" in capsys.readouterr().err
    run = tmp_path / "ode"
    # a learning-rate factor for the time corrections: only the shared model has them, so the dense model
    # and the baseline would refuse the pattern if it reached their training too
    assert main([*common, "--eval-steps", "2,1", "--log-every-steps", "1", "--output-dir", str(run),
                 "--time-rank", "1", "--ode-lr-multipliers", "*time_corrections*=10"]) == 0
    lines = [json.loads(line) for line in (run / "ode" / "train_log.jsonl").read_text().splitlines()]
    logged = [entry for entry in lines if "trajectory" in entry]
    assert len(logged) >= 5 and all(entry["trajectory"] > 0 and "soft" in entry for entry in logged)
    # the baseline (first layer kept) gets the same signal: its layer 1 matched to the dense layer 2
    lines = [json.loads(line) for line in (run / "drop-1" / "train_log.jsonl").read_text().splitlines()]
    assert len([entry for entry in lines if entry.get("hidden", 0) > 0]) >= 5


def test_ode_lr_multipliers_are_the_shared_models_own_and_checked_up_front(capsys):
    from plmkit.cli import main
    from plmkit.compress.ode_job import ODESetup
    from plmkit.errors import ConfigError

    with pytest.raises(SystemExit):
        main(["compress", "ode", "--help"])
    flags = capsys.readouterr().out
    assert "--ode-lr-multipliers" in flags and "\n  --lr-multipliers" not in flags  # one model's flag only
    with pytest.raises(ConfigError, match="--ode-lr-multipliers entry '\\*time_corrections\\*'"):
        ODESetup(ode_lr_multipliers="*time_corrections*")


def test_table_scores_keep_each_prediction_and_agree_with_the_evaluator(tmp_path, make_encoder):
    from plmkit.compress.jobs import latency_batch
    from plmkit.compress.ode_job import ODESetup, _scores
    from plmkit.models import build_classifier
    from plmkit.textclf import TaskData
    from tests.test_cli import _write_task

    backbone = make_encoder("bert")
    setup = ODESetup(task=str(_write_task(tmp_path / "task")), max_length=16)
    data = TaskData(setup.load(setup.task), backbone.tokenizer, 16)
    model = build_classifier(backbone.model, 2).eval()
    row = _scores(model, data, latency_batch(backbone.tokenizer, 2, 8), "accuracy")
    assert row["gflops"] > 0
    for split in ("validation", "test"):
        features = getattr(data, split)
        with torch.no_grad():  # one example at a time, no padding: an independent reading of the predictions
            own = [model(input_ids=torch.tensor([f["input_ids"]]),
                         attention_mask=torch.tensor([f["attention_mask"]])).argmax(-1).item() for f in features]
        assert row["predictions"][split] == own
        assert row[split] == pytest.approx(data.evaluate(model, split)["accuracy"])


def test_dense_cache_is_reused_only_for_the_settings_it_was_made_with(tmp_path, make_encoder):
    """A cached dense teacher made for another task setting must be refused, never silently reused."""
    from dataclasses import replace

    from plmkit.compress.ode_job import ODESetup, _dense
    from plmkit.errors import ConfigError
    from plmkit.models import build_classifier
    from plmkit.runs import RunFolder
    from plmkit.textclf import TaskData
    from plmkit.trainer import TrainerConfig
    from tests.test_cli import _write_task

    backbone = make_encoder("bert")
    setup = ODESetup(task=str(_write_task(tmp_path / "task")), max_length=16, dense_cache=str(tmp_path / "d.st"))
    data = TaskData(setup.load(setup.task), backbone.tokenizer, 16)
    trainer = TrainerConfig(output_dir=str(tmp_path / "t"), batch_size=8, progress=False, save_checkpoints=False)
    run = RunFolder(tmp_path / "run")
    trained = build_classifier(backbone.model, 2)
    assert "loaded_from" not in _dense(trained, setup, data, trainer, run, 1, "tiny")
    fresh = build_classifier(make_encoder("bert").model, 2)
    assert _dense(fresh, setup, data, trainer, run, 1, "tiny")["loaded_from"] == setup.dense_cache
    assert all(torch.equal(a, b) for a, b in zip(trained.state_dict().values(), fresh.state_dict().values(),
                                                 strict=True))
    for other in ({"epochs": 2}, {"backbone": "other"}, {"trainer": replace(trainer, learning_rate=1.0)}):
        args = [build_classifier(make_encoder("bert").model, 2), setup, data,
                other.get("trainer", trainer), run, other.get("epochs", 1), other.get("backbone", "tiny")]
        with pytest.raises(ConfigError, match="dense-cache"):
            _dense(*args)
    # the same sizes and settings, but one training text changed: the rows' fingerprint differs
    changed = data.task.train.map(lambda row, i: {"text": row["text"] + " x" if i == 0 else row["text"]},
                                  with_indices=True)
    other_task = replace(data.task, train=changed)
    assert other_task.describe() == data.task.describe()
    with pytest.raises(ConfigError, match="rows"):
        _dense(build_classifier(make_encoder("bert").model, 2), setup, TaskData(other_task, backbone.tokenizer, 16),
               trainer, run, 1, "tiny")
