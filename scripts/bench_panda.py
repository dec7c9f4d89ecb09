"""Benchmark: no transfer vs vanilla prompt transfer vs PANDA per source–target pair, and the metric check.

Every pair goes through ``plmkit.mtl.pipeline.run_transfer`` (the ``plmkit transfer`` job): stage-1
prompts come from (or go into) one store, so each task's prompt is trained once. For every target:
``prompt`` (no transfer) once, then for every other task of the pool ``prompt-transfer``, and for the
first ``--panda-sources`` of them also ``panda`` (its teacher is the same seed's prompt-transfer
model). Seeds give mean ± std. The metric check is the Spearman correlation, per target, between
T(s, t) and the vanilla transfer gain over no transfer (mean over seeds) over every source of the
pool, for the transferability metric of the run (``--metric``) and for the prompt-weight cosine.
Beside it, how reproducible that gain order is: the mean seed-to-seed Spearman of the sources' gains
and the ceiling it puts on any metric's correlation with the seed mean (``plmkit.metrics.rank_reliability``).

    .venv/bin/python scripts/bench_panda.py            # CPU subsample (see the flags' defaults)

Targets can be split over processes that share one store (``--store``; the store's per-entry lock
makes each prompt train once), then merged: ``--report a.json b.json --out all.json``.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

from scipy.stats import spearmanr

from plmkit.metrics import rank_reliability
from plmkit.mtl.pipeline import TransferSetup, run_transfer
from plmkit.mtl.prompts import read_prompts
from plmkit.mtl.transferability import prompt_weight_similarity
from plmkit.runs import RunFolder, environment
from plmkit.trainer import TrainerConfig

GLUE = Path(__file__).resolve().parents[2] / "shared" / "data" / "glue"  # benchmark data, never the product's
TASKS = {"rotten-tomatoes": "rotten-tomatoes", "sst2": f"{GLUE}/sst2", "rt-subjectivity": "rt-subjectivity",
         "tweet-sentiment": "tweet-sentiment", "bbc-topic": "bbc-topic", "cola": f"{GLUE}/cola",
         "qnli": f"{GLUE}/qnli", "qqp": f"{GLUE}/qqp", "mnli": f"{GLUE}/mnli", "stsb": f"{GLUE}/stsb"}


SETTINGS = ("backbone", "seeds", "train", "eval", "source_train", "epochs", "source_epochs", "prompt_length",
            "max_length", "learning_rate", "student_init", "metric")  # what a measured pair depends on (--resume)
LEGACY = {"metric": "activation"}  # results written before a setting existed were measured with this value
LIBRARIES = ("torch", "transformers")  # per-seed scores need these versions to reproduce (--resume reuses scores)


def _versions() -> dict[str, str | None]:
    return {k: v for k, v in environment()["versions"].items() if k in LIBRARIES}


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="minilm-l6")
    parser.add_argument("--targets", default="rotten-tomatoes,sst2,rt-subjectivity,stsb")
    parser.add_argument("--pool", default=",".join(TASKS), help="tasks; every other one is a source of a target")
    parser.add_argument("--panda-sources", type=int, default=4,
                        help="the first N sources of each target (pool order) also get PANDA; the rest only "
                             "vanilla transfer (for the metric check)")
    parser.add_argument("--student-init", default="fresh", choices=("fresh", "source"))
    parser.add_argument("--metric", default="activation",
                        help="transferability metric that ranks and weighs sources (--panda-metric; 'activation' "
                             "here, as every published table was measured with it; the product default is 'neurons')")
    parser.add_argument("--store", default=None, help="stage-1 store (default: a fresh temporary one)")
    parser.add_argument("--resume", action="store_true",
                        help="keep the pairs already in --out (same settings assumed) and run only the rest")
    parser.add_argument("--report", nargs="+", default=None, metavar="JSON",
                        help="merge these results files into --out and print the tables; trains nothing")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--train", type=int, default=200, help="target training rows")
    parser.add_argument("--eval", type=int, default=300, help="target validation/test rows")
    parser.add_argument("--source-train", type=int, default=400)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--source-epochs", type=int, default=3)
    parser.add_argument("--prompt-length", type=int, default=10)
    parser.add_argument("--max-length", type=int, default=48)
    parser.add_argument("--learning-rate", type=float, default=3e-2)
    parser.add_argument("--out", default="scripts/results/panda_cpu.json")
    return parser.parse_args()


def run_one(args, work: Path, target: str, sources: str, compare: str, label: str) -> dict:
    setup = TransferSetup(sources=sources, target=TASKS[target], method=compare.split(",")[0], compare=compare,
                          seeds=args.seeds, backbone=args.backbone, store=args.store or str(work / "store"),
                          learning_rate=args.learning_rate, max_length=args.max_length, max_train_samples=args.train,
                          max_eval_samples=args.eval, source_max_train_samples=args.source_train,
                          source_max_eval_samples=args.eval, source_epochs=args.source_epochs,
                          source_learning_rate=args.learning_rate, baseline=False,
                          include_target_adapter=True,
                          method_options={"prompt_length": args.prompt_length, "panda_metric": args.metric,
                                          **({"panda_student_init": args.student_init} if "panda" in compare else {})})
    base = TrainerConfig(epochs=args.epochs, batch_size=16, progress=False, save_checkpoints=False)
    run = RunFolder.create("bench-panda", str(work / label), label=label)
    return run_transfer(setup, base, run)


def scores(metrics: dict, method: str) -> list[float]:
    return [r["test"][metrics["metric"]] for r in metrics["runs"] if r["method"] == method]


def main() -> None:
    global _ARGS
    args = _ARGS = parse()
    if args.report:
        return _report(args)
    started = time.perf_counter()
    pool = [t for t in args.pool.split(",") if t]
    work = Path(tempfile.mkdtemp(prefix="bench-panda-"))
    pairs, validation = [], []
    done, versions = {}, _versions()
    if args.resume and Path(args.out).is_file():
        earlier = json.loads(Path(args.out).read_text())
        differ = [k for k in SETTINGS if earlier["args"].get(k, LEGACY.get(k)) != vars(args)[k]]
        if differ:
            raise SystemExit(f"--resume: {args.out} was measured with other {', '.join(differ)}; "
                             "pass the same settings or another --out")
        # the kept pairs' scores (and the target's no-transfer scores, copied into new pairs) are per seed:
        # they stand beside new ones only where the libraries that produced them are the same
        if "versions" not in earlier:
            print(f"--resume: {args.out} does not record its library versions; its scores are kept as if "
                  f"measured with these ({versions})", flush=True)
        elif earlier["versions"] != versions:
            raise SystemExit(f"--resume: {args.out} was measured with {earlier['versions']}, this environment has "
                             f"{versions}; per-seed scores do not carry across versions: use another --out")
        done = {(r["target"], r["source"]): r for r in earlier["pairs"]}
    for target in args.targets.split(","):
        earlier = [r for (t, _), r in done.items() if t == target]
        plain = earlier[0]["none"] if earlier else \
            scores(run_one(args, work, target, "", "prompt", f"{target}-none"), "prompt")
        rows = []
        for i, source in enumerate(s for s in pool if s != target):
            if (target, source) in done:
                rows.append(done[target, source])
                continue
            with_panda = i < args.panda_sources
            compare = "prompt-transfer,panda" if with_panda else "prompt-transfer"
            m = run_one(args, work, target, TASKS[source], compare, f"{target}-{source}")
            first = next(r for r in m["runs"] if r["method"] == "prompt-transfer")
            transfer = scores(m, "prompt-transfer")
            row = {"target": target, "source": source, "metric": m["metric"],
                   "transferability": first["mean_transferability"], "none": plain, "prompt_transfer": transfer,
                   "gain_transfer": statistics.fmean(transfer) - statistics.fmean(plain)}
            if with_panda:
                panda = scores(m, "panda")
                row.update(beta=next(r for r in m["runs"] if r["method"] == "panda")["beta"], panda=panda,
                           gain_panda=statistics.fmean(panda) - statistics.fmean(plain))
            row["weight_similarity"] = _weight_similarity(work, target, source)
            rows.append(row)
            print(json.dumps({k: row.get(k) for k in ("target", "source", "transferability", "beta", "gain_transfer",
                                                      "gain_panda")}), flush=True)
            _write(args, {"args": vars(args), "versions": versions, "pairs": pairs + rows,
                          "metric_validation": validation, "partial": True,
                          "wall_time_s": time.perf_counter() - started})
        validation.append(_spearman(target, rows, args.metric))
        pairs.extend(rows)
    out = {"args": vars(args), "versions": versions, "pairs": pairs, "metric_validation": validation,
           "wall_time_s": time.perf_counter() - started}
    _write(args, out)
    _print(out)


def _report(args: argparse.Namespace) -> None:
    parts = [json.loads(Path(f).read_text()) for f in args.report]
    pairs = [r for p in parts for r in p["pairs"]]
    targets = list(dict.fromkeys(r["target"] for r in pairs))  # every target's check over all its sources
    runs = [a for p in parts for a in (p["args"] if isinstance(p["args"], list) else [p["args"]])]  # merged files
    # one table holds one setting: the metric names its Spearman column, and the seed-to-seed check pairs the
    # files' score lists position by position, which is only right when every file ran the same seeds
    differ = [k for k in SETTINGS if len({json.dumps(a.get(k, LEGACY.get(k))) for a in runs}) > 1]
    if differ:
        raise SystemExit(f"--report: the files were measured with different {', '.join(differ)}; "
                         "merge only files of one setting")
    metric = runs[0].get("metric", LEGACY["metric"])
    # one run's file records a dict, a merged file the list of its parts' dicts (as with "args")
    recorded = [p.get("versions") or [] for p in parts]
    versions = [v for r in recorded for v in (r if isinstance(r, list) else [r])]
    distinct = list({json.dumps(v, sort_keys=True): v for v in versions}.values())
    if len(distinct) > 1:  # pairs stay comparable within themselves
        print(f"--report: the files were measured with different library versions ({distinct}); "
              "compare methods within a pair, not scores across files", flush=True)
    unrecorded = [f for f, r in zip(args.report, recorded, strict=True) if not r]
    if unrecorded and versions:
        print(f"--report: {', '.join(unrecorded)} record(s) no library versions; merged as if measured with "
              f"{distinct}", flush=True)
    out = {"args": runs, "versions": versions, "pairs": pairs,
           "metric_validation": [_spearman(t, [r for r in pairs if r["target"] == t], metric) for t in targets],
           "partial": any(p.get("partial") for p in parts), "wall_time_s": sum(p["wall_time_s"] for p in parts)}
    _write(args, out)
    _print(out)


def _write(args: argparse.Namespace, out: dict) -> None:
    """Written after every pair, so a run cut short keeps what it measured (``partial``)."""
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))


def _weight_similarity(work: Path, target: str, source: str) -> float:
    """Weight-space cosine of the target's own prompt (trained on ``--train`` rows) and the source's
    (``--source-train`` rows): store entries are told apart by the training size their config records."""
    from plmkit.backbones import load_encoder
    from plmkit.mtl.store import AdapterStore

    global _BACKBONE
    _BACKBONE = globals().get("_BACKBONE") or load_encoder(_ARGS.backbone)
    store = AdapterStore(_ARGS.store or work / "store")

    def entry(task: str, rows: int) -> Path:
        slug = Path(TASKS[task]).name
        for e in store.list(backbone=_ARGS.backbone, kind="prompt"):
            config = json.loads((e.path / "config.json").read_text())
            if e.task == slug and config["task"]["sizes"]["train"] == rows and \
                    config["prompt"]["length"] == _ARGS.prompt_length:
                return e.path
        raise LookupError(f"no stored prompt for {task} trained on {rows} rows")

    a = read_prompts(entry(target, _ARGS.train), _BACKBONE.model, target)[1]
    b = read_prompts(entry(source, _ARGS.source_train), _BACKBONE.model, source)[1]
    return prompt_weight_similarity(a, b)


def _spearman(target: str, rows: list[dict], metric: str) -> dict:
    """Spearman(T, vanilla gain) for the run's transferability ``metric``, and for the prompt-weight cosine."""
    gains = [r["gain_transfer"] for r in rows]
    by_metric = spearmanr([r["transferability"] for r in rows], gains)
    weights = spearmanr([r["weight_similarity"] for r in rows], gains)
    out = {"target": target, "sources": len(rows), "metric": metric, "spearman_T": float(by_metric.statistic),
           "p_T": float(by_metric.pvalue), "spearman_weights": float(weights.statistic),
           "p_weights": float(weights.pvalue)}
    seeds = {len(r["prompt_transfer"]) for r in rows}
    if len(rows) >= 3 and len(seeds) == 1 and seeds.pop() >= 2:
        # how reproducible the sources' order by gain is over seeds: one seed's transfer scores rank the sources
        # as its gains do (no transfer is the same for every source of a seed); the ceiling bounds any metric
        by_seed = [[r["prompt_transfer"][i] for r in rows] for i in range(len(rows[0]["prompt_transfer"]))]
        reliability = rank_reliability(by_seed)
        out.update(gain_agreement=reliability["agreement"], gain_reliability=reliability["reliability"],
                   spearman_ceiling=reliability["ceiling"])
    return out


def _fmt(values: list[float]) -> str:
    return f"{100 * statistics.fmean(values):.1f} ± {100 * statistics.pstdev(values):.1f}"


def _print(out: dict) -> None:
    print("\n| target | source | T | β | no transfer | prompt transfer | PANDA |\n|---|---|---|---|---|---|---|")
    for r in out["pairs"]:
        beta = f"{r['beta']:.2f}" if "panda" in r else "–"
        panda = _fmt(r["panda"]) if "panda" in r else "–"
        print(f"| {r['target']} | {r['source']} | {r['transferability']:.3f} | {beta} | {_fmt(r['none'])} "
              f"| {_fmt(r['prompt_transfer'])} | {panda} |")
    pairs = [r for r in out["pairs"] if "panda" in r]
    if pairs:
        transfer = statistics.fmean(r["gain_transfer"] for r in pairs)
        panda = statistics.fmean(r["gain_panda"] for r in pairs)
        print(f"\nover the {len(pairs)} PANDA pairs, mean gain over no transfer: prompt transfer {100 * transfer:+.2f}, "
              f"PANDA {100 * panda:+.2f} points (PANDA − prompt transfer {100 * (panda - transfer):+.2f}); "
              f"PANDA >= no transfer on {sum(r['gain_panda'] >= 0 for r in pairs)}/{len(pairs)} pairs")
    # files written before the metric was a setting hold the activation metric's figures as spearman_activation
    rows = [(v.get("metric", LEGACY["metric"]), v.get("spearman_T", v.get("spearman_activation")),
             v.get("p_T", v.get("p_activation", float("nan"))), v) for v in out["metric_validation"]]
    name = rows[0][0] if rows else LEGACY["metric"]
    print(f"\n| target | sources | Spearman(T, gain) {name} (p) | Spearman weight cosine (p) "
          "| seed-to-seed Spearman of the gains | ceiling |\n|---|---|---|---|---|---|")
    for _, rho, p, v in rows:
        print(f"| {v['target']} | {v.get('sources', '')} | {rho:.2f} ({p:.2f}) "
              f"| {v['spearman_weights']:.2f} ({v.get('p_weights', float('nan')):.2f}) "
              f"| {v.get('gain_agreement', float('nan')):.2f} | {v.get('spearman_ceiling', float('nan')):.2f} |")
    print(f"\nwall time {out['wall_time_s']:.0f} s")


if __name__ == "__main__":
    main()
