"""CLI smoke runs on a tiny random backbone and a small task folder."""

from __future__ import annotations

import json
import os
import random

import pytest

from plmkit.cli import main
from tests.conftest import WORDS


def _write_task(folder, n_train=48, n_eval=16):
    folder.mkdir(parents=True, exist_ok=True)
    rng = random.Random(0)
    positive, negative = ["great", "fun", "loved", "good"], ["bad", "awful", "boring", "hated"]
    for split, n in (("train", n_train), ("validation", n_eval), ("test", n_eval)):
        with open(folder / f"{split}.jsonl", "w") as handle:
            for i in range(n):
                label = i % 2
                word = rng.choice(positive if label else negative)
                text = f"the movie was {word} {rng.choice(WORDS)} {i}"
                handle.write(json.dumps({"text": text, "label": label}) + "\n")
    return folder


def test_adapters_train_writes_a_complete_run_folder(tmp_path, tiny_backbone_dir, capsys):
    task = _write_task(tmp_path / "task")
    run = tmp_path / "run"
    code = main(["adapters", "train", "--task", str(task), "--backbone", str(tiny_backbone_dir),
                 "--epochs", "2", "--batch-size", "8", "--max-length", "32", "--output-dir", str(run),
                 "--no-progress", "--reduction-factor", "4"])
    assert code == 0
    out = capsys.readouterr().out
    assert "validation" in out and "accuracy" in out and str(run) in out
    for name in ("config.json", "metrics.json", "run.log", "train_log.jsonl", "training_curves.png",
                 "best.safetensors", "adapter/config.json", "adapter/weights.safetensors"):
        assert (run / name).is_file(), name
    metrics = json.loads((run / "metrics.json").read_text())
    assert 0.0 <= metrics["validation"]["accuracy"] <= 1.0
    assert metrics["train"]["global_step"] == 2 * (48 // 8)
    config = json.loads((run / "config.json").read_text())
    assert config["adapter"]["reduction_factor"] == 4 and config["backbone"]["model_type"] == "bert"
    assert config["task"]["split_info"]


def test_config_file_values_are_used_and_flags_override(tmp_path, tiny_backbone_dir):
    task = _write_task(tmp_path / "task")
    config = tmp_path / "run.json"
    config.write_text(json.dumps({"epochs": 1, "batch_size": 16, "max_length": 32, "progress": False,
                                  "reduction_factor": 8}))
    run = tmp_path / "run"
    assert main(["adapters", "train", "--config", str(config), "--task", str(task), "--backbone",
                 str(tiny_backbone_dir), "--batch-size", "8", "--output-dir", str(run)]) == 0
    resolved = json.loads((run / "config.json").read_text())
    assert resolved["trainer"]["epochs"] == 1 and resolved["trainer"]["batch_size"] == 8
    assert resolved["adapter"]["reduction_factor"] == 8


def test_bad_task_is_one_clear_line_not_a_traceback(tmp_path, tiny_backbone_dir, capsys):
    code = main(["adapters", "train", "--task", str(tmp_path / "missing.csv"), "--backbone",
                 str(tiny_backbone_dir), "--output-dir", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: ") and "missing.csv" in err and "Traceback" not in err


def test_missing_column_names_the_fix(tmp_path, tiny_backbone_dir, capsys):
    folder = tmp_path / "task"
    folder.mkdir()
    rows = "".join(f"film number {i} was {'good' if i % 2 else 'bad'},{i % 2}\n" for i in range(30))
    (folder / "train.csv").write_text("body,label\n" + rows)
    code = main(["adapters", "train", "--task", str(folder / "train.csv"), "--backbone", str(tiny_backbone_dir),
                 "--output-dir", str(tmp_path / "run"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2 and "body" in err and "text-field" in err.replace("_", "-")


def test_unknown_backbone_folder(tmp_path, capsys):
    task = _write_task(tmp_path / "task")
    code = main(["adapters", "train", "--task", str(task), "--backbone", str(tmp_path / "nope"),
                 "--output-dir", str(tmp_path / "run"), "--no-progress"])
    assert code == 2 and "nope" in capsys.readouterr().err


def test_assets_list_prints_the_registry(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PLMKIT_CACHE", str(tmp_path / "cache"))
    assert main(["assets", "list"]) == 0
    out = capsys.readouterr().out
    for name in ("minilm-l6", "smollm2-135m", "mpnet-base", "rotten-tomatoes-corpus"):
        assert name in out
    assert main(["assets", "list", "--json"]) == 0
    assert {row["name"] for row in json.loads(capsys.readouterr().out)} >= {"minilm-l6", "mpnet-base"}


def test_assets_fetch_unknown_name(capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("PLMKIT_CACHE", str(tmp_path / "cache"))
    assert main(["assets", "fetch", "no-such-asset"]) == 2
    assert "no-such-asset" in capsys.readouterr().err


@pytest.mark.distributed
def test_torchrun_two_processes_share_one_run_folder(tmp_path, tiny_backbone_dir):
    import subprocess
    import sys

    from plmkit.distributed import free_port

    task = _write_task(tmp_path / "task")
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "MASTER_PORT")}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
               str(free_port()), "-m", "plmkit.cli", "adapters", "train", "--task", str(task), "--backbone",
               str(tiny_backbone_dir), "--epochs", "2", "--batch-size", "4", "--max-length", "32", "--no-progress"]
    done = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    runs = list((tmp_path / "runs" / "adapters").iterdir())
    assert len(runs) == 1
    metrics = json.loads((runs[0] / "metrics.json").read_text())
    assert metrics["train"]["global_step"] == 2 * 48 // (4 * 2)
    config = json.loads((runs[0] / "config.json").read_text())
    assert config["environment"]["world_size"] == 2


def _all_parsers(parser):
    import argparse

    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                yield from _all_parsers(sub)


def test_every_subcommand_renders_its_help():
    """--help formats every flag's documentation (a stray '%' in a docstring would crash it)."""
    from plmkit.cli import build_parser

    parsers = list(_all_parsers(build_parser()))
    assert len(parsers) >= 8
    for parser in parsers:
        assert parser.format_help().startswith("usage:"), parser.prog


def test_job_parser_adds_sections_in_order_and_dispatches():
    import argparse
    from dataclasses import dataclass

    from plmkit.cliargs import Flags, add_job_parser, build_dataclass

    @dataclass
    class Part:
        width: int = 4
        """How wide."""
        name: str = "x"

    def extra(parser):
        parser.add_argument("--extra", type=int, default=7)

    sub = argparse.ArgumentParser(prog="plmkit").add_subparsers(dest="command")
    job = add_job_parser(sub, "job", print, [Flags(Part, "part", exclude=("name",), defaults={"width": 9}), extra],
                         help="a job")
    text = job.format_help()
    usage = job.format_usage()
    assert usage.index("--config") < usage.index("--width") < usage.index("--extra")
    assert "part:\n  --width INT" in text
    assert "--name" not in text and "How wide. (default: 9)" in text
    args = job.parse_args(["--width", "3", "--overwrite"])
    assert (args.width, args.extra, args.overwrite, args.func, args._parser) == (3, 7, True, print, job)
    assert job.parse_args([]).width == 9 and not hasattr(args, "name")
    assert build_dataclass(Part, args) == Part(width=3) and job.epilog.startswith("Run folders")
