"""No silent wrong results from run folders and flags: each case once finished with exit code 0 and a
wrong (or mixed) result; now it works correctly or stops with one clear line.

The store, trainer and asset-cache cases live in ``test_reliability_store.py``,
``test_reliability_trainer.py`` and ``test_reliability_assets.py``.
"""

from __future__ import annotations

import json

import pytest

from plmkit.cli import main
from plmkit.errors import ConfigError
from plmkit.jobs import DataArgs
from plmkit.runs import RunFolder, settings_differences
from tests.test_cli import _write_task


def _train(task, backbone, out, *extra):
    return main(["adapters", "train", "--task", str(task), "--backbone", str(backbone), "--epochs", "1",
                 "--batch-size", "8", "--max-length", "32", "--no-progress", "--output-dir", str(out), *extra])


# ------------------------------------------------------------------------------ 1. resume checks what it resumes
@pytest.mark.parametrize("change", [("--learning-rate", "5e-3"), ("--seed", "3"), ("--task", "other")])
def test_resume_with_other_settings_is_refused_and_keeps_the_run(tmp_path, tiny_backbone_dir, capsys, change):
    task, other = _write_task(tmp_path / "task"), _write_task(tmp_path / "other", n_train=40)
    out = tmp_path / "run"
    assert _train(task, tiny_backbone_dir, out) == 0
    metrics_before = (out / "metrics.json").read_bytes()
    adapter_before = (out / "adapter" / "weights.safetensors").read_bytes()
    flag, value = change
    args = ["--resume", flag, str(other) if value == "other" else value]
    if flag == "--task":
        code = main(["adapters", "train", "--task", str(other), "--backbone", str(tiny_backbone_dir), "--epochs",
                     "1", "--batch-size", "8", "--max-length", "32", "--no-progress", "--output-dir", str(out),
                     "--resume"])
    else:
        code = _train(task, tiny_backbone_dir, out, *args)
    assert code == 2
    err = capsys.readouterr().err
    assert "--resume" in err and "Differences" in err
    field = {"--learning-rate": "trainer.learning_rate", "--seed": "trainer.seed", "--task": "setup.task"}[flag]
    assert field in err
    assert (out / "metrics.json").read_bytes() == metrics_before
    assert (out / "adapter" / "weights.safetensors").read_bytes() == adapter_before


def test_resume_with_the_same_settings_is_accepted(tmp_path, tiny_backbone_dir):
    task, out = _write_task(tmp_path / "task"), tmp_path / "run"
    assert _train(task, tiny_backbone_dir, out) == 0
    assert _train(task, tiny_backbone_dir, out, "--resume") == 0
    assert "resumed from" in (out / "run.log").read_text()


def test_a_second_run_into_a_used_folder_is_refused_unless_overwrite(tmp_path, tiny_backbone_dir, capsys):
    task, out = _write_task(tmp_path / "task"), tmp_path / "run"
    assert _train(task, tiny_backbone_dir, out) == 0
    config_before = (out / "config.json").read_text()
    assert _train(task, tiny_backbone_dir, out, "--learning-rate", "5e-3") == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--overwrite" in err
    assert (out / "config.json").read_text() == config_before
    (out / "stale.txt").write_text("from the old run")
    assert _train(task, tiny_backbone_dir, out, "--learning-rate", "5e-3", "--overwrite") == 0
    assert not (out / "stale.txt").exists()
    assert json.loads((out / "config.json").read_text())["trainer"]["learning_rate"] == 5e-3


def test_settings_differences_ignore_what_does_not_change_the_result():
    stored = {"trainer": {"learning_rate": 1e-3, "progress": True, "resume": False}, "environment": {"a": 1},
              "task": {"fingerprint": "abc"}}
    same = {"trainer": {"learning_rate": 1e-3, "progress": False, "resume": True}, "environment": {"a": 2},
            "task": {"fingerprint": "abc"}}
    assert settings_differences(stored, same) == []
    other = {"trainer": {"learning_rate": 1e-3}, "task": {"fingerprint": "abd"}}
    assert settings_differences(stored, other) == ["task.fingerprint: 'abc' -> 'abd'"]


def test_write_config_refuses_a_damaged_stored_config_on_resume(tmp_path):
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(ConfigError, match="damaged"):
        RunFolder(tmp_path, resume=True).write_config({"a": 1})


# ------------------------------------------------------------------------------ 8. numbers checked at the door
@pytest.mark.parametrize("value", ["0", "-5"])
def test_max_length_must_be_positive(tmp_path, tiny_backbone_dir, capsys, value):
    task = _write_task(tmp_path / "task")
    code = main(["adapters", "train", "--task", str(task), "--backbone", str(tiny_backbone_dir),
                 "--max-length", value, "--no-progress", "--output-dir", str(tmp_path / "run")])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "--max-length" in err[0]


def test_zero_samples_means_all_in_every_job(tmp_path, tiny_backbone_dir):
    task, out = _write_task(tmp_path / "task"), tmp_path / "run"
    assert _train(task, tiny_backbone_dir, out, "--max-train-samples", "0") == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["global_step"] == 48 // 8  # every training example, one epoch
    assert DataArgs(max_train_samples=0, max_eval_samples=0).max_train_samples is None
    with pytest.raises(ConfigError, match="--max-eval-samples"):
        DataArgs(max_eval_samples=-1)


def test_compress_takes_backbone_like_every_job_and_keeps_model_as_alias():
    from plmkit.cli import build_parser

    parser = build_parser()
    for flag in ("--backbone", "--model"):
        args = parser.parse_args(["compress", "mpo", flag, "some/folder"])
        assert args.backbone == "some/folder"


# ------------------------------------------------------------------------------ 10. a failed run says why in run.log
def test_a_failed_run_writes_its_error_into_run_log(tmp_path, tiny_backbone_dir, capsys):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "train.jsonl").write_text(json.dumps({"sentence": "no label here"}) + "\n")
    out = tmp_path / "run"
    assert _train(folder, tiny_backbone_dir, out) == 2
    err = capsys.readouterr().err
    log = (out / "run.log").read_text()
    assert "ERROR" in log and err.strip().removeprefix("error: ")[:40] in log
