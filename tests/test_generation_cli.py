"""``plmkit generate`` end to end on a tiny random generator and a tiny real task; label mismatches refused."""

from __future__ import annotations

import json

import pytest

from plmkit.cli import main

SPEC = {"name": "tiny", "labels": ["negative", "positive"],
        "prompts": {"negative": "a bad movie was", "positive": "a good movie was"},
        "zero_shot": "the {label} movie {text}", "filters": {"min_words": 1, "max_words": 50}}
GOOD = ["good fun film", "loved the great story", "a really funny show", "great actor and good plot"]
BAD = ["bad boring film", "hated the awful story", "a really boring show", "awful actor and bad plot"]


@pytest.fixture
def setup_files(make_decoder, tmp_path):
    backbone = make_decoder("llama")
    backbone.model.save_pretrained(tmp_path / "gen")
    backbone.tokenizer.save_pretrained(tmp_path / "gen")
    (tmp_path / "spec.json").write_text(json.dumps(SPEC))
    real = tmp_path / "real"
    real.mkdir()
    for split in ("train", "validation", "test"):
        rows = [{"text": t, "label": "positive"} for t in GOOD] + [{"text": t, "label": "negative"} for t in BAD]
        (real / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return tmp_path


def _args(root, out, *extra):
    return ["generate", "--spec", str(root / "spec.json"), "--generator", str(root / "gen"), "--n", "16",
            "--samples-per-condition", "4", "--max-new-tokens", "6", "--chunk-size", "2",
            "--generation-batch-size", "8", "--held-out", "0.25", "--epochs", "2", "--batch-size", "4",
            "--hidden-size", "8", "--embedding-dim", "8", "--no-progress", "--output-dir", str(out), *extra]


def test_generate_end_to_end_with_both_baselines(setup_files, capsys, monkeypatch):
    import numpy as np

    from plmkit.generation import jobs

    root = setup_files
    checked = []  # --consistency asks the zero-shot check about every sample that passed the text rules

    def first_disagrees(backbone, spec, kept):
        checked.extend(kept)
        return np.arange(len(kept)) > 0

    monkeypatch.setattr(jobs, "label_agreement", first_disagrees)
    assert main(_args(root, root / "run", "--eval", str(root / "real"), "--loss", "sce", "--consistency")) == 0
    metrics = json.loads((root / "run" / "metrics.json").read_text())
    assert metrics["generation"]["samples_made"] == 16
    counts = metrics["synthetic"]["filter_counts"]
    assert counts["generated"] == 16 and counts["kept"] == sum(metrics["synthetic"]["kept_per_label"].values())
    dropped = sum(v for k, v in counts.items() if k not in ("generated", "kept"))
    assert counts["label_mismatch"] == 1 and len(checked) == counts["kept"] + 1 and counts["kept"] + dropped == 16
    for key in ("validation", "test", "synthetic_test"):
        assert 0.0 <= metrics["synthetic_model"][key]["accuracy"] <= 1.0
    assert metrics["zero_shot"]["examples"] == 8
    assert set(metrics["supervised"]) == {"train", "held_out", "validation", "test"}
    lines = (root / "run" / "generation" / "synthetic" / "train.jsonl").read_text().splitlines()
    assert {json.loads(line)["label"] for line in lines} <= {"negative", "positive"}
    out = capsys.readouterr().out
    assert "zero-shot prompting of the generator" in out and "supervised" in out and "near_duplicate" in out
    # resuming the finished run makes nothing new and keeps the same data set
    assert main(_args(root, root / "run", "--eval", str(root / "real"), "--loss", "sce", "--consistency", "--resume",
                      "--no-zero-shot", "--no-supervised")) == 2  # other settings: refused, not mixed
    assert "Differences" in capsys.readouterr().err


def test_eval_task_with_other_labels_is_a_clear_error(setup_files, capsys):
    root = setup_files
    other = root / "other"
    other.mkdir()
    rows = [{"text": t, "label": "sport"} for t in GOOD] + [{"text": t, "label": "tech"} for t in BAD]
    (other / "train.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(_args(root, root / "run2", "--eval", str(other))) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "label" in err and "Traceback" not in err
    assert not (root / "run2" / "generation").exists()  # refused before generating anything


def test_the_supervised_baseline_selects_on_rows_held_out_of_the_real_training_split():
    """The ceiling must never select on the real split it is scored on: its validation rows come out of
    the real training split (a seeded 25 % here), disjoint from what it trains on."""
    import pandas as pd

    from plmkit.generation.jobs import supervised_task
    from plmkit.tasks import task_from_frames

    texts = [f"review number {i}" for i in range(20)]
    frame = pd.DataFrame({"text": texts, "label": ["negative", "positive"] * 10})
    other = pd.DataFrame({"text": ["unseen a", "unseen b"], "label": ["negative", "positive"]})
    real = task_from_frames("real", frame, other, other, label_names=["negative", "positive"])
    task = supervised_task(real, 0.25, seed=3)
    train, held = list(task.train["text"]), list(task.validation["text"])
    assert len(held) == 5 and len(train) == 15 and not set(train) & set(held)
    assert sorted(train + held) == sorted(texts)  # every real training row, none of the real validation
    assert task.label_names == ["negative", "positive"]
    by_text = dict(zip(texts, ["negative", "positive"] * 10, strict=True))
    assert all(task.label_names[label] == by_text[text] for text, label in zip(task.train["text"],
                                                                              task.train["label"], strict=True))
    assert list(supervised_task(real, 0.25, seed=3).validation["text"]) == held  # seeded


def test_consistency_is_refused_for_a_set_written_earlier():
    from plmkit.errors import ConfigError
    from plmkit.generation.jobs import GenerateSetup

    with pytest.raises(ConfigError, match="--consistency filters samples when the synthetic set is written"):
        GenerateSetup(synthetic="runs/old/generation/synthetic", consistency=True)


def test_self_debias_flags_reach_the_generator(setup_files):
    root = setup_files
    assert main(_args(root, root / "plain", "--no-zero-shot", "--no-supervised")) == 0
    assert main(_args(root, root / "debiased", "--self-debias", "--debias-decay", "50",
                      "--no-zero-shot", "--no-supervised")) == 0
    manifest = json.loads((root / "debiased" / "generation" / "generation.json").read_text())
    assert manifest["generation"]["self_debias"] is True and manifest["generation"]["debias_decay"] == 50.0
    raw = {name: [json.loads(line)["raw"] for line in (root / name / "generation" / "raw.rank0.jsonl").open()]
           for name in ("plain", "debiased")}
    assert len(raw["plain"]) == len(raw["debiased"]) == 16 and raw["plain"] != raw["debiased"]
