"""The metric check without retraining: re-rank measured source–target pairs under every metric.

``scripts/bench_panda.py`` measures, per pair, the vanilla prompt-transfer gain over no transfer (and
PANDA's); the prompts it trained stay in its ``--store``. This script reads those pairs (its JSON) and
that store, ranks each target's sources under every transferability metric of
``plmkit.mtl.transferability.METRICS`` (plus the prompt-weight cosine), through the product's own path
(``prepare_source`` finds the stored prompts by their keys, ``rank_sources`` embeds them on the target's
first ``--probe-size`` training rows), and reports:

* per target, the Spearman correlation of T with the vanilla gain (as ``bench_panda.py`` does);
* over all pairs, the Spearman correlation of T with the gain after each target's mean gain is taken
  off (so one target's generally larger gains do not count as ranking skill);
* how often the top-ranked source has the best gain, and the mean gain of the top-ranked source.

Nothing is trained: a stored prompt that is missing (another store, or other settings than the
benchmark's) stops the script with one line. The settings come from the pairs files, which must agree on
them (``bench_panda.SETTINGS``) and hold each pair once.

    .venv/bin/python scripts/bench_transferability.py --pairs scripts/results/panda_cpu_1000x3_all.json \\
        --store /path/to/the/benchmark/store --out scripts/results/transferability_check_1000x3.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
from collections import Counter
from pathlib import Path

from bench_panda import LEGACY, SETTINGS, TASKS
from scipy.stats import spearmanr

import plmkit.mtl.pipeline as pipeline
from plmkit.backbones import load_encoder
from plmkit.mtl.panda import rank_sources
from plmkit.mtl.pipeline import TransferSetup, prepare_source
from plmkit.mtl.prompts import KIND, read_prompts
from plmkit.mtl.store import AdapterStore
from plmkit.mtl.transferability import METRICS, prompt_weight_similarity
from plmkit.runs import RunFolder
from plmkit.textclf import TaskData
from plmkit.trainer import TrainerConfig


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--pairs", nargs="+", required=True, help="bench_panda.py JSON file(s)")
    parser.add_argument("--store", required=True, help="the stage-1 store those runs used")
    parser.add_argument("--metrics", default=",".join(METRICS))
    parser.add_argument("--probe-size", type=int, default=64)
    parser.add_argument("--exclude", nargs="+", default=[], metavar="JSON",
                        help="leave out the (target, source) pairs of these bench_panda.py files, e.g. the pairs "
                             "a metric was designed on, to check it on the others only")
    parser.add_argument("--out", default="scripts/results/transferability_check.json")
    return parser.parse_args()


def _no_training(*_args, **_kwargs):
    raise SystemExit("a prompt is not in --store with the benchmark's settings (would train it): pass the store "
                     "and the pairs JSON of the same bench_panda.py run")


def _setup(settings: dict, store: str, target: str, sources: list[str], metric: str, probe_size: int
           ) -> TransferSetup:
    """The TransferSetup ``bench_panda.run_one`` builds for this target (its store keys and data)."""
    return TransferSetup(sources=",".join(TASKS[s] for s in sources), target=TASKS[target], method="panda",
                         backbone=settings["backbone"], store=store, learning_rate=settings["learning_rate"],
                         max_length=settings["max_length"], max_train_samples=settings["train"],
                         max_eval_samples=settings["eval"], source_max_train_samples=settings["source_train"],
                         source_max_eval_samples=settings["eval"], source_epochs=settings["source_epochs"],
                         source_learning_rate=settings["learning_rate"], baseline=False,
                         include_target_adapter=True,
                         method_options={"prompt_length": settings["prompt_length"], "panda_metric": metric,
                                         "panda_probe_size": probe_size})


def main() -> None:
    args = parse()
    pipeline.train_source = _no_training  # reuse stored prompts only
    parts = [json.loads(Path(f).read_text()) for f in args.pairs]
    settings = [p["args"] for p in parts]
    settings = [s for group in settings for s in (group if isinstance(group, list) else [group])]
    differ = sorted({k for s in settings for k in SETTINGS
                     if s.get(k, LEGACY.get(k)) != settings[0].get(k, LEGACY.get(k))})
    if differ:
        raise SystemExit(f"the --pairs files were measured with different {', '.join(differ)}: "
                         "check the pairs of one setting at a time")
    recorded = settings[0].get("metric", LEGACY["metric"])  # the metric whose T the benchmark recorded
    pairs = [r for p in parts for r in p["pairs"]]
    twice = [pair for pair, n in Counter((r["target"], r["source"]) for r in pairs).items() if n > 1]
    if twice:
        raise SystemExit(f"the pair {twice[0][0]} <- {twice[0][1]} is in --pairs more than once: "
                         "pass each measured pair once")
    excluded = {(r["target"], r["source"]) for f in args.exclude for r in json.loads(Path(f).read_text())["pairs"]}
    pairs = [r for r in pairs if (r["target"], r["source"]) not in excluded]
    if not pairs:
        raise SystemExit("every pair of --pairs is in --exclude: nothing left to check")
    metrics = [m for m in args.metrics.split(",") if m]
    unknown = [m for m in metrics if m not in METRICS]
    if unknown:
        raise SystemExit(f"--metrics: unknown {', '.join(unknown)}; the metrics are {', '.join(METRICS)}")
    backbone = load_encoder(settings[0]["backbone"])
    base = TrainerConfig(epochs=settings[0]["epochs"], batch_size=16, progress=False, save_checkpoints=False)
    run = RunFolder.create("transferability-check", tempfile.mkdtemp(prefix="bench-transferability-"))
    store = AdapterStore(args.store)
    rows = []
    for target in dict.fromkeys(r["target"] for r in pairs):
        mine = [r for r in pairs if r["target"] == target]
        sources = [r["source"] for r in mine]
        setup = _setup(settings[0], args.store, target, sources, metrics[0], args.probe_size)
        refs = [prepare_source(backbone, TASKS[s], setup, base, store, run, KIND)[0] for s in sources]
        refs.append(prepare_source(backbone, setup.target, setup, base, store, run, KIND, is_target=True)[0])
        task = setup.load(setup.target, max_train_samples=settings[0]["train"],
                          max_eval_samples=settings[0]["eval"])
        data = TaskData(task, backbone.tokenizer, settings[0]["max_length"], model_config=backbone.config)
        scores = {}
        for metric in metrics:
            setup = _setup(settings[0], args.store, target, sources, metric, args.probe_size)
            ranked = rank_sources(refs, backbone, data, setup, setup.method_config("panda"))
            scores[metric] = {r.name: r.transferability for r in ranked}
        own = read_prompts(refs[-1].path, backbone.model, target)[1]
        weights = {ref.name: prompt_weight_similarity(own, read_prompts(ref.path, backbone.model, ref.name)[1])
                   for ref in refs[:-1]}
        names = [ref.name for ref in refs[:-1]]
        for row, name in zip(mine, names, strict=True):
            rows.append({"target": target, "source": row["source"], "gain_transfer": row["gain_transfer"],
                         "gain_panda": row.get("gain_panda"), "recorded_T": row["transferability"],
                         **{m: scores[m][name] for m in metrics}, "weights": weights[name]})
    out = {"pairs_files": args.pairs, "store": args.store, "probe_size": args.probe_size, "excluded": args.exclude,
           "recorded_metric": recorded,
           "rows": rows, "summary": summarise(rows, [*metrics, "weights"])}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    report(out, [*metrics, "weights"])


def summarise(rows: list[dict], metrics: list[str]) -> dict:
    targets = list(dict.fromkeys(r["target"] for r in rows))
    summary = {}
    for metric in metrics:
        per_target, top_best, top_gain, centred_t, centred_g = {}, 0, [], [], []
        for target in targets:
            mine = [r for r in rows if r["target"] == target]
            t, g = [r[metric] for r in mine], [r["gain_transfer"] for r in mine]
            per_target[target] = float(spearmanr(t, g).statistic)
            top = max(range(len(mine)), key=lambda i: t[i])
            top_best += g[top] == max(g)
            top_gain.append(g[top])
            centred_t += [x - statistics.fmean(t) for x in t]
            centred_g += [x - statistics.fmean(g) for x in g]
        pooled = spearmanr(centred_t, centred_g)
        summary[metric] = {"spearman_per_target": per_target,
                           "targets_at_or_above_0.5": sum(v >= 0.5 for v in per_target.values()),
                           "spearman_pooled_centred": float(pooled.statistic), "p_pooled": float(pooled.pvalue),
                           "top_ranked_is_best": top_best, "top_ranked_mean_gain": statistics.fmean(top_gain)}
    summary["oracle_mean_gain"] = statistics.fmean(
        max(r["gain_transfer"] for r in rows if r["target"] == t) for t in targets)
    return summary


def report(out: dict, metrics: list[str]) -> None:
    rows, summary = out["rows"], out["summary"]
    print("\n| target | source | gain (PT) | " + " | ".join(f"T {m}" for m in metrics) + " |")
    print("|---|---|---|" + "---|" * len(metrics))
    for r in rows:
        print(f"| {r['target']} | {r['source']} | {100 * r['gain_transfer']:+.1f} | "
              + " | ".join(f"{r[m]:.3f}" for m in metrics) + " |")
    targets = list(dict.fromkeys(r["target"] for r in rows))
    print("\n| metric | " + " | ".join(targets) + " | ≥ 0.5 | pooled (centred) | top = best | top's gain |")
    print("|---|" + "---|" * (len(targets) + 4))
    for m in metrics:
        s = summary[m]
        print(f"| {m} | " + " | ".join(f"{s['spearman_per_target'][t]:+.2f}" for t in targets)
              + f" | {s['targets_at_or_above_0.5']}/{len(targets)} | {s['spearman_pooled_centred']:+.2f} "
              f"(p {s['p_pooled']:.2f}) | {s['top_ranked_is_best']}/{len(targets)} | "
              f"{100 * s['top_ranked_mean_gain']:+.2f} |")
    print(f"\nthe best source per target (oracle) gains {100 * summary['oracle_mean_gain']:+.2f} on average")
    recorded = out["recorded_metric"]
    if recorded in metrics:
        drift = max(abs(r[recorded] - r["recorded_T"]) for r in rows)
        print(f"{recorded} T recomputed vs recorded by the benchmark: max |difference| {drift:.2e}")


if __name__ == "__main__":
    main()
