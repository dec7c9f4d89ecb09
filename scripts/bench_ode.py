"""ODE benchmark: accuracy-latency frontier of the step-robust shared MiniLM vs dropping layers.

For each task (rotten-tomatoes and GLUE SST-2 from ../shared/data/glue/sst2) this runs the
``plmkit compress ode`` job: fine-tune MiniLM-L6 (the dense reference and teacher; cached in
``--dense-cache`` so lever reruns share it), build the shared model (T = 6 Euler steps; by default one
block = mean of the 6 layers), train it with step counts drawn per batch from {6, 3, 2} plus
distillation, then measure ``--eval-steps`` (6, 3, 2); the baseline keeps the first 3 and 2 layers of
the fine-tuned dense model and fine-tunes each the same way (docs/ode.md has the commands used).

    python scripts/bench_ode.py --tasks rotten-tomatoes --train-samples 2000 --eval-samples 500 \
        --max-length 48 --epochs 2 --ode-epochs 3 --ode-learning-rate 2e-4 --latency-tokens 48

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

ROOT = Path(__file__).resolve().parents[1]
TASKS = ("rotten-tomatoes", str(ROOT.parent / "shared" / "data" / "glue" / "sst2"))


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
                     ode_epochs=args.ode_epochs, ode_learning_rate=args.ode_learning_rate, distill=args.distill,
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
                       num_blocks=args.num_blocks)
    metrics = ode_compress(setup, config, trainer, run)
    rows = metrics["table"]
    depth = metrics["ode_config"]["depth"]
    return {"task": Path(task).name, "metric": metrics["metric"], "rows": rows, "summary": _summary(rows, depth),
            "dense_fine_tuned": metrics.get("dense", {}).get("test"), "wall_time_s": time.perf_counter() - started}


def main(argv: list[str] | None = None) -> int:
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
    parser.add_argument("--eval-steps", default="6,3,2")
    parser.add_argument("--latency-batch", type=int, default=32)
    parser.add_argument("--latency-tokens", type=int, default=64)
    parser.add_argument("--latency-rounds", type=int, default=7)
    parser.add_argument("--dense-cache", default=str(Path(tempfile.gettempdir()) / "plmkit-bench-ode-dense"),
                        help="folder of fine-tuned dense weights reused across runs ('' : none)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default=str(ROOT / "scripts" / "results" / "bench_ode.json"))
    args = parser.parse_args(argv)

    sys.path.insert(0, str(ROOT))
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
            print(json.dumps(result["summary"], indent=1))
            Path(args.out).write_text(json.dumps(results, indent=1))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
