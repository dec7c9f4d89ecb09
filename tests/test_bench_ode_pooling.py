"""scripts/bench_ode.py's result pooling: seeds of one setting, and one setting against another, per example."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


@pytest.fixture(scope="module")
def bench(load_script):
    return load_script("bench_ode")


def _result(path: Path, seed: int, rows: dict[str, str], labels: str = "0101", **settings) -> str:
    """A result file as bench_ode writes it, reduced to what pooling reads."""
    split = {"labels": labels, "rows": rows}
    path.write_text(json.dumps({"settings": {"seed": seed, "out": str(path), "ode_epochs": 5, **settings},
                                "tasks": [{"task": "rt", "correct": {"validation": split, "test": split},
                                           "summary": {"full_steps": 6, "per_budget": [{"steps": 6}, {"steps": 3}]}}]}))
    return str(path)


def test_versus_compares_each_row_per_example_across_settings(bench, tmp_path, capsys):
    mine = [_result(tmp_path / f"a{s}.json", s, {"shared@3": "1111", "drop@3": "1100"}, ode_epochs=8) for s in (1, 2)]
    theirs = [_result(tmp_path / f"b{s}.json", s, {"shared@3": "1100", "drop@3": "1100", "dense@6": "1"})
              for s in (1, 2)]
    bench.versus(mine, theirs, str(tmp_path / "out.json"))
    out = json.loads((tmp_path / "out.json").read_text())
    assert out["settings_that_differ"] == ["ode_epochs"]  # seed and output are not settings
    got = {(c["comparison"], c["split"]): c for c in out["tasks"][0]["comparisons"]}
    assert set(got) == {(m, s) for m in ("shared", "drop") for s in ("validation", "test")}  # rows on both sides
    shared = got["shared", "test"]
    assert (shared["a"], shared["b"], shared["runs"], shared["examples"]) == (100.0, 50.0, 2, 4)
    assert shared["difference"] == pytest.approx(50.0)  # two of four examples right only on one side
    assert got["drop", "test"]["difference"] == 0 and got["drop", "test"]["low"] == got["drop", "test"]["high"] == 0
    assert "settings that differ: ode_epochs" in capsys.readouterr().out


def test_a_lever_without_its_own_baseline_is_judged_against_the_other_sides_layer_dropping(bench, tmp_path):
    lever = [_result(tmp_path / "lever.json", 1, {"shared@3": "1110", "shared@6": "1111"}, train_steps="6,3,3,2")]
    recipe = [_result(tmp_path / "recipe.json", 1, {"shared@3": "1100", "shared@6": "1111",
                                                     "layer dropping@3": "1000"})]
    bench.versus(lever, recipe, str(tmp_path / "out.json"))
    got = {(c["comparison"], c["steps"], c["split"]): c["difference"]
           for c in json.loads((tmp_path / "out.json").read_text())["tasks"][0]["comparisons"]}
    assert got["shared", 3, "test"] == pytest.approx(25.0) and got["shared", 6, "test"] == 0
    assert got["shared - their layer dropping", 3, "test"] == pytest.approx(50.0)
    assert ("shared - their layer dropping", 6, "test") not in got  # no dropping at 6 steps on either side


def test_versus_and_pool_refuse_what_cannot_be_paired(bench, tmp_path, capsys):
    a = _result(tmp_path / "a.json", 1, {"shared@3": "1111"})
    b = _result(tmp_path / "b.json", 1, {"shared@3": "1111"}, labels="1111")
    c = _result(tmp_path / "c.json", 2, {"shared@3": "1111"}, ode_epochs=8)
    with pytest.raises(SystemExit, match="did not score the same validation examples"):
        bench.versus([a], [b], str(tmp_path / "out.json"))
    with pytest.raises(SystemExit, match="one file per seed"):
        bench.versus([a], [b, c], str(tmp_path / "out.json"))
    with pytest.raises(SystemExit, match=r"other settings than .*a\.json \(ode_epochs\)"):
        bench.pool([a, c], str(tmp_path / "out.json"))
    with pytest.raises(SystemExit):
        bench.main(["--versus", a])
    assert "--versus compares against the runs given with --pool" in capsys.readouterr().err
