"""ODE benchmark: accuracy-latency frontier of the step-robust shared MiniLM vs dropping layers.

For each task (rotten-tomatoes and GLUE SST-2 from ../shared/data/glue/sst2) this runs the
``plmkit compress ode`` job: fine-tune MiniLM-L6 (the dense reference and teacher; cached in
``--dense-cache`` so lever reruns share it), build the shared model (T = 6 Euler steps; by default one
block = mean of the 6 layers), train it with step counts drawn per batch from {6, 3, 2} plus
distillation, then measure ``--eval-steps`` (6, 3, 2); the baseline keeps the first 3 and 2 layers of
the fine-tuned dense model and fine-tunes each the same way (docs/ode.md has the commands used).

    python scripts/bench_ode.py --tasks rotten-tomatoes --train-samples 2000 --eval-samples 500 \
        --max-length 48 --epochs 2 --ode-epochs 3 --ode-learning-rate 2e-4 --latency-tokens 48

Each run also keeps, per table row, which validation and test examples it got right, and compares the
shared model with layer dropping at each budget (and with its own full step count) by a paired bootstrap
over the examples (``plmkit.metrics.paired_bootstrap``: mean difference, 95 % interval, P(difference <= 0)).
``--pool A.json B.json C.json`` pools runs of the same settings (seeds) the same way, averaging each
example over the runs, without training anything:

    python scripts/bench_ode.py --pool r42.json r43.json r44.json --out pooled.json

``--versus`` compares two settings row by row (each pooled over its seeds, matched in order), e.g. a
lever against the recipe:

    python scripts/bench_ode.py --pool lever42.json lever43.json --versus r42.json r43.json --out lever.json

Latency is the median over ``--latency-rounds`` interleaved rounds (every row timed once per round) of
one eval forward of a fixed batch (``--latency-batch`` x ``--latency-tokens``) on the CPU; no GPU figures come from a machine without one. Prints one table
per task and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("rotten-tomatoes", str(ROOT.parent / "shared" / "data" / "glue" / "sst2"))


def _correct(run_path: Path) -> dict:
    """Per split: the labels and, per table row ("model@steps"), a string of 1/0 for right/wrong per example."""
    saved = json.loads((run_path / "predictions.json").read_text())
    out = {}
    for split, labels in saved["labels"].items():
        digits = all(isinstance(y, int) and 0 <= y <= 9 for y in labels)
        out[split] = {"labels": "".join(map(str, labels)) if digits else labels, "rows": {
            f"{row['model']}@{row['steps']}": "".join("1" if p == y else "0"
                                                      for p, y in zip(row[split], labels, strict=True))
            for row in saved["rows"]}}
    return out


def _ode_key(correct: dict, steps: int) -> str:
    return next(key for key in correct["test"]["rows"] if key.startswith("shared") and key.endswith(f"@{steps}"))


def _paired(runs: list[dict], split: str, a_key: str, b_key: str) -> dict:
    """Paired bootstrap of row a minus row b (points) on ``split`` over the runs' shared examples."""
    from plmkit.metrics import paired_bootstrap

    labels = runs[0][split]["labels"]
    if any(run[split]["labels"] != labels for run in runs):
        raise SystemExit(f"the runs did not score the same {split} examples (pass results of the same "
                         "--eval-samples and data seed)")
    a = np.array([[int(c) for c in run[split]["rows"][a_key]] for run in runs])  # (runs, examples)
    b = np.array([[int(c) for c in run[split]["rows"][b_key]] for run in runs])
    out = paired_bootstrap(a, b)
    return {**{k: 100 * out[k] for k in ("difference", "low", "high")}, "p_not_ahead": out["p_not_ahead"],
            "a": 100 * a.mean(), "b": 100 * b.mean(), "examples": out["examples"], "runs": out["runs"]}


def _comparisons(runs: list[dict], full_steps: int, budgets: list[int]) -> list[dict]:
    """For each budget n < T: shared at n minus layer dropping at n, and shared at n minus shared at T."""
    out = []
    for n in budgets:
        ode = _ode_key(runs[0], n)
        pairs = [("shared - layer dropping", ode, f"layer dropping@{n}"),
                 ("shared - shared at full steps", ode, _ode_key(runs[0], full_steps))]
        for name, a_key, b_key in pairs:
            if b_key not in runs[0]["test"]["rows"]:
                continue
            for split in ("validation", "test"):
                out.append({"steps": n, "comparison": name, "split": split, **_paired(runs, split, a_key, b_key)})
    return out


def _summary(rows: list[dict], full_steps: int) -> dict:
    """Per step count: speed-up and test loss against the shared model at T, lead over layer dropping."""
    ode = {row["steps"]: row for row in rows if row["model"].startswith("shared")}
    drop = {row["steps"]: row for row in rows if row["model"] == "layer dropping"}
    dense = next((row for row in rows if row["model"] == "dense"), None)
    full = ode[full_steps]
    out = {"full_steps": full_steps, "per_budget": []}
    for steps, row in sorted(ode.items(), reverse=True):
        entry = {"steps": steps, "speedup_vs_full": full["latency_ms"] / row["latency_ms"],
                 "flop_ratio_vs_full": full["gflops"] / row["gflops"],
                 "test_drop_points": 100 * (full["test"] - row["test"])}
        if dense is not None:
            entry["speedup_vs_dense"] = dense["latency_ms"] / row["latency_ms"]
            entry["test_drop_vs_dense_points"] = 100 * (dense["test"] - row["test"])
        if steps in drop:
            entry["ahead_of_layer_dropping_points"] = 100 * (row["test"] - drop[steps]["test"])
        out["per_budget"].append(entry)
    return out


def _dense_cache(task: str, args: argparse.Namespace) -> str | None:
    """One weights file per (task, backbone, data and dense-training settings), so levers reuse the teacher."""
    if not args.dense_cache:
        return None
    key = "-".join(str(v) for v in (Path(task).name, Path(args.backbone).name, args.train_samples, args.max_length,
                                    args.dense_epochs or args.epochs, args.batch_size, args.learning_rate, args.seed))
    return str(Path(args.dense_cache) / f"{key}.safetensors")


def run_task(task: str, args: argparse.Namespace, folder: Path) -> dict:
    from plmkit.compress.ode import ODEConfig
    from plmkit.compress.ode_job import ODESetup, ode_compress
    from plmkit.runs import RunFolder
    from plmkit.trainer import TrainerConfig

    setup = ODESetup(backbone=args.backbone, task=task, max_train_samples=args.train_samples,
                     max_eval_samples=args.eval_samples, max_length=args.max_length, eval_steps=args.eval_steps,
                     latency_batch=args.latency_batch, latency_tokens=args.latency_tokens,
                     ode_epochs=args.ode_epochs, ode_learning_rate=args.ode_learning_rate,
                     ode_lr_multipliers=args.ode_lr_multipliers, distill=args.distill,
                     distill_trajectory=args.distill_trajectory,
                     dense_epochs=args.dense_epochs, baseline_epochs=args.baseline_epochs,
                     baseline=not args.no_baseline, latency_rounds=args.latency_rounds,
                     dense_cache=_dense_cache(task, args))
    run = RunFolder.create("bench-ode", str(folder / Path(task).name), label=Path(task).name)
    trainer = TrainerConfig(output_dir=str(run.path), epochs=args.epochs, batch_size=args.batch_size,
                            learning_rate=args.learning_rate, warmup_ratio=0.1, save_checkpoints=False,
                            progress=False, seed=args.seed)
    started = time.perf_counter()
    config = ODEConfig(train_steps=args.train_steps, init=args.init, init_layer=args.init_layer,
                       num_blocks=args.num_blocks, step_gains=args.step_gains,
                       step_norms=args.step_norms, form=args.form, time_rank=args.time_rank)
    metrics = ode_compress(setup, config, trainer, run)
    rows = metrics["table"]
    depth = metrics["ode_config"]["depth"]
    correct = _correct(run.path)
    budgets = sorted({r["steps"] for r in rows if r["model"].startswith("shared") and r["steps"] < depth}, reverse=True)
    summary = {**_summary(rows, depth), "paired": _comparisons([correct], depth, budgets)}
    return {"task": Path(task).name, "metric": metrics["metric"], "rows": rows, "summary": summary,
            "correct": correct, "dense_fine_tuned": metrics.get("dense", {}).get("test"),
            "wall_time_s": time.perf_counter() - started}


def _paired_table(comparisons: list[dict], title: str) -> str:
    from plmkit.report import format_table

    return format_table(
        [[c["comparison"], c["steps"], c["split"], f"{c['a']:.1f}", f"{c['b']:.1f}", f"{c['difference']:+.2f}",
          f"[{c['low']:+.2f}, {c['high']:+.2f}]", f"{c['p_not_ahead']:.3f}"] for c in comparisons],
        ["comparison (a - b)", "steps", "split", "a %", "b %", "a - b (points)", "95% CI", "P(a - b <= 0)"],
        title=title)


def _settings(result: dict) -> dict:
    """What a run was measured with, less what may differ between seeds of one setting.

    A setting that a result file predates was run at its flag's default.
    """
    settings = {**vars(_parser().parse_args([])), **result["settings"]}
    return {k: v for k, v in settings.items() if k not in ("seed", "out", "tasks", "pool", "versus")}


def _differ(a: dict, b: dict) -> list[str]:
    return sorted(k for k in a.keys() | b.keys() if a.get(k) != b.get(k))


def _load_seeds(files: list[str]) -> list[dict]:
    """The result files of one setting; refused if they were run with other settings (seed and output aside)."""
    loaded = [json.loads(Path(f).read_text()) for f in files]
    for path, other in zip(files[1:], loaded[1:], strict=True):
        differ = _differ(_settings(loaded[0]), _settings(other))
        if differ:
            raise SystemExit(f"{path} was run with other settings than {files[0]} ({', '.join(differ)}); "
                             "pool only seeds of one setting")
    return loaded


def versus(files: list[str], others: list[str], out: str) -> int:
    """Two settings, each pooled over its seeds: every table row of one minus the same row of the other.

    The seeds are matched in order (file i of --pool with file i of --versus), and the runs must have
    scored the same examples; rows are compared per example by the paired bootstrap. When the --pool
    side has no layer dropping of its own (a lever run with --no-baseline), its shared rows are also
    compared with the --versus side's layer dropping at the same budget.
    """
    if len(files) != len(others):
        raise SystemExit(f"--pool has {len(files)} files and --versus {len(others)}; pass one file per seed to each")
    mine, theirs = _load_seeds(files), _load_seeds(others)
    compared = {"files": files, "versus": others, "settings_that_differ": _differ(_settings(mine[0]),
                                                                                    _settings(theirs[0])), "tasks": []}
    for name in dict.fromkeys(t["task"] for result in mine for t in result["tasks"]):
        a_runs = [t["correct"] for result in mine for t in result["tasks"] if t["task"] == name and "correct" in t]
        b_runs = [t["correct"] for result in theirs for t in result["tasks"] if t["task"] == name and "correct" in t]
        if len(a_runs) != len(files) or len(b_runs) != len(others):
            raise SystemExit(f"{name}: every file on both sides needs this task with a per-example record")
        for split in ("validation", "test"):
            if any(run[split]["labels"] != a_runs[0][split]["labels"] for run in a_runs + b_runs):
                raise SystemExit(f"{name}: the runs did not score the same {split} examples (pass results of the "
                                 "same --eval-samples and data seed)")
        mine_rows, their_rows = a_runs[0]["test"]["rows"], b_runs[0]["test"]["rows"]
        pairs = [(key.rsplit("@", 1)[0], key, key) for key in mine_rows if key in their_rows]
        # a lever run without its own baseline (--no-baseline) is judged against the other side's layer dropping
        pairs += [("shared - their layer dropping", key, f"layer dropping@{key.rsplit('@', 1)[1]}")
                  for key in mine_rows if key.startswith("shared") and f"layer dropping@{key.rsplit('@', 1)[1]}"
                  in their_rows and f"layer dropping@{key.rsplit('@', 1)[1]}" not in mine_rows]
        comparisons = []
        for label, a_key, b_key in pairs:
            for split in ("validation", "test"):
                both = [{split: {"labels": run[split]["labels"], "rows": {"a": run[split]["rows"][a_key],
                                                                         "b": other[split]["rows"][b_key]}}}
                        for run, other in zip(a_runs, b_runs, strict=True)]
                comparisons.append({"comparison": label, "steps": int(a_key.rsplit("@", 1)[1]), "split": split,
                                    **_paired(both, split, "a", "b")})
        compared["tasks"].append({"task": name, "runs": len(a_runs), "comparisons": comparisons})
        print("\n" + _paired_table(comparisons, f"{name}: --pool minus --versus, same row, {len(a_runs)} seeds "
                                                f"pooled per example (settings that differ: "
                                                f"{', '.join(compared['settings_that_differ']) or 'none'})"))
    Path(out).write_text(json.dumps(compared, indent=1))
    print(f"wrote {out}")
    return 0


def pool(files: list[str], out: str) -> int:
    """Pool several runs (seeds) of the same settings: paired bootstrap over examples, per task and budget."""
    loaded = _load_seeds(files)
    pooled = {"files": files, "tasks": []}
    for name in dict.fromkeys(t["task"] for result in loaded for t in result["tasks"]):
        runs = [t for result in loaded for t in result["tasks"] if t["task"] == name]
        if any("correct" not in run for run in runs):
            raise SystemExit(f"{name}: a result has no per-example record (made before predictions were kept)")
        full = runs[0]["summary"]["full_steps"]
        budgets = [b["steps"] for b in runs[0]["summary"]["per_budget"] if b["steps"] < full]
        comparisons = _comparisons([run["correct"] for run in runs], full, budgets)
        pooled["tasks"].append({"task": name, "runs": len(runs), "comparisons": comparisons})
        print("\n" + _paired_table(comparisons, f"{name}: {len(runs)} runs pooled per example"))
    Path(out).write_text(json.dumps(pooled, indent=1))
    print(f"wrote {out}")
    return 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backbone", default="minilm-l6")
    parser.add_argument("--tasks", nargs="+", default=list(TASKS))
    parser.add_argument("--train-samples", type=int, default=1000)
    parser.add_argument("--eval-samples", type=int, default=400)
    parser.add_argument("--max-length", type=int, default=48)
    parser.add_argument("--epochs", type=int, default=1, help="epochs of the dense and baseline fine-tuning")
    parser.add_argument("--ode-epochs", type=int, default=None, help="epochs of the shared model (default --epochs)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--ode-learning-rate", type=float, default=None)
    parser.add_argument("--ode-lr-multipliers", default="",
                        help="'PATTERN=FACTOR,...' learning-rate factors for the shared model's parameters")
    parser.add_argument("--dense-epochs", type=int, default=None, help="epochs of the dense model (default --epochs)")
    parser.add_argument("--baseline-epochs", type=int, default=None,
                        help="epochs of each layer-dropped model (default --epochs)")
    parser.add_argument("--no-baseline", action="store_true", help="skip layer dropping (lever runs)")
    parser.add_argument("--distill", type=float, default=0.5)
    parser.add_argument("--distill-trajectory", type=float, default=0.0,
                        help="weight of trajectory distillation of the shared model (0: none)")
    parser.add_argument("--init", default="average", help="average | layer | random | mpo")
    parser.add_argument("--init-layer", default="0", help="one layer for every block, or one per block: 0,2,4")
    parser.add_argument("--num-blocks", type=int, default=1)
    parser.add_argument("--train-steps", default="auto")
    parser.add_argument("--step-gains", action="store_true",
                        help="learned gain vector per step of every trained step count (ODEConfig.step_gains)")
    parser.add_argument("--step-norms", action="store_true",
                        help="learned scale and shift of the block's pre-norms per step of every trained step count "
                             "(ODEConfig.step_norms)")
    parser.add_argument("--form", default="prenorm", choices=("prenorm", "postnorm"),
                        help="the block's field: pre-LN residual (prenorm) or the post-LN layer minus identity "
                             "(postnorm: the source's layers are exact steps; ODEConfig.form)")
    parser.add_argument("--time-rank", type=int, default=0,
                        help="rank of a correction per unit of time to each of the block's linears, so the field is "
                             "F(h, t) (ODEConfig.time_rank; 0: none)")
    parser.add_argument("--eval-steps", default="6,3,2")
    parser.add_argument("--latency-batch", type=int, default=32)
    parser.add_argument("--latency-tokens", type=int, default=64)
    parser.add_argument("--latency-rounds", type=int, default=7)
    parser.add_argument("--dense-cache", default=str(Path(tempfile.gettempdir()) / "plmkit-bench-ode-dense"),
                        help="folder of fine-tuned dense weights reused across runs ('' : none)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default=str(ROOT / "scripts" / "results" / "bench_ode.json"))
    parser.add_argument("--pool", nargs="+", metavar="RESULT",
                        help="no training: pool these result files (seeds of one setting) and write --out")
    parser.add_argument("--versus", nargs="+", metavar="RESULT",
                        help="with --pool: the seeds of another setting, in the same seed order; prints every "
                             "row of --pool minus the same row here, per example")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))
    if args.versus and not args.pool:
        parser.error("--versus compares against the runs given with --pool")
    if args.pool:
        return versus(args.pool, args.versus, args.out) if args.versus else pool(args.pool, args.out)
    from plmkit.cliargs import quiet_libraries
    from plmkit.report import format_table

    quiet_libraries()
    results = {"settings": vars(args), "device": "cpu", "tasks": []}
    with tempfile.TemporaryDirectory(prefix="bench-ode-") as tmp:
        for task in args.tasks:
            result = run_task(task, args, Path(tmp))
            results["tasks"].append(result)
            key = result["metric"]
            print("\n" + format_table(
                [[r["model"], r["steps"], r["latency_ms"], r["gflops"], r["validation"], r["test"]]
                 for r in result["rows"]],
                ["model", "steps/layers", "latency ms", "GFLOPs", f"validation {key}", f"test {key}"],
                title=f"{result['task']} ({result['wall_time_s']:.0f} s)"))
            print(json.dumps({k: v for k, v in result["summary"].items() if k != "paired"}, indent=1))
            print(_paired_table(result["summary"]["paired"], f"{result['task']}: paired over examples"))
            Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
