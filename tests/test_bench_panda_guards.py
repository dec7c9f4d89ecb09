"""scripts/bench_panda.py refuses to mix results that cannot stand in one table (--resume, --report)."""

from __future__ import annotations

import json
import sys

import pytest


@pytest.fixture(scope="module")
def bench(load_script):
    return load_script("bench_panda")


def _args(bench, monkeypatch, *argv: str):
    monkeypatch.setattr(sys, "argv", ["bench_panda.py", *argv])
    monkeypatch.setattr(bench, "run_one", _no_training)  # a guard that let a run through fails here, fast
    return vars(bench.parse())


def _no_training(*_, **__):
    raise AssertionError("the guard should have stopped the benchmark before any training")


def test_resume_refuses_scores_measured_with_other_library_versions(bench, monkeypatch, tmp_path):
    out = tmp_path / "r.json"
    args = _args(bench, monkeypatch, "--resume", "--out", str(out))
    other = {**bench._versions(), "transformers": "0.0.1"}
    out.write_text(json.dumps({"args": args, "versions": other, "pairs": []}))
    with pytest.raises(SystemExit, match="do not carry across versions"):
        bench.main()
    args["epochs"] += 1  # and other settings, before the versions are looked at
    out.write_text(json.dumps({"args": args, "versions": bench._versions(), "pairs": []}))
    with pytest.raises(SystemExit, match="other epochs"):
        bench.main()


def test_report_refuses_files_of_different_settings(bench, monkeypatch, tmp_path):
    files = []
    for name, seeds in (("a", "1,2,3"), ("b", "1,2")):
        path = tmp_path / f"{name}.json"
        args = _args(bench, monkeypatch, "--seeds", seeds)
        path.write_text(json.dumps({"args": args, "pairs": [], "wall_time_s": 1.0}))
        files.append(str(path))
    monkeypatch.setattr(sys, "argv", ["bench_panda.py", "--report", *files, "--out", str(tmp_path / "m.json")])
    with pytest.raises(SystemExit, match="different seeds"):
        bench.main()
    assert not (tmp_path / "m.json").exists()


def test_report_flattens_the_versions_of_merged_files_and_names_files_without_any(bench, monkeypatch, tmp_path,
                                                                                   capsys):
    args, mine = _args(bench, monkeypatch), bench._versions()
    contents = {"old": {"args": args, "pairs": []},
                "run": {"args": args, "versions": mine, "pairs": []},
                "merged": {"args": [args, args], "versions": [mine, mine], "pairs": []}}
    files = []
    for name, content in contents.items():
        (tmp_path / f"{name}.json").write_text(json.dumps({**content, "wall_time_s": 1.0}))
        files.append(str(tmp_path / f"{name}.json"))
    monkeypatch.setattr(sys, "argv", ["bench_panda.py", "--report", *files, "--out", str(tmp_path / "m.json")])
    bench.main()
    said = capsys.readouterr().out
    assert "different library versions" not in said  # one version set, however the files nest it
    assert "old.json record(s) no library versions" in said
    assert json.loads((tmp_path / "m.json").read_text())["versions"] == [mine, mine, mine]
