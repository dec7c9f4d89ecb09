"""Self-debiasing on a pair task: the same `plmkit generate --spec nli` run with and without --self-debias.

Both arms are the product command, in one process each, with the same conditions (premises), seed
and settings; the only difference is ``--self-debias`` (each label's prompt is debiased against the
other two labels' prompts for the same premise, decay --debias-decay). Per arm it reports:

- generation speed (samples/s; self-debiasing runs 1 + 2 rows per sample) and the filter counts;
- over the kept samples, per label: how much of the hypothesis is copied from the premise (share of
  its words found in the premise; share of near copies with >= 90 % of its words there), the share
  holding a negation word, and the share whose label the generator's own zero-shot prompting picks
  (the --consistency check, run here on every kept sample);
- the task model trained on the synthetic set, scored on real MNLI rows (with zero-shot prompting of
  the generator on the same rows, run once).

Prints a table and writes JSON.

    python scripts/bench_self_debias.py --n 600 --work-dir /tmp/sd --output scripts/results/bench_self_debias.json
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

MNLI = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "glue" / "mnli"
NEGATIONS = {"not", "no", "never", "nobody", "nothing", "none", "neither", "nor", "cannot"}


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def copy_stats(rows: list[dict]) -> dict[str, float]:
    """Word overlap of each hypothesis with its premise, near copies and negations, averaged."""
    overlap, near, negated = [], [], []
    for row in rows:
        words, premise = _words(row["text"]), set(_words(row["condition"]))
        share = sum(w in premise for w in words) / max(1, len(words))
        overlap.append(share)
        near.append(share >= 0.9)
        negated.append(any(w in NEGATIONS or w.endswith("n't") for w in words))
    count = max(1, len(rows))
    return {"samples": len(rows), "premise_word_share": sum(overlap) / count, "near_copy": sum(near) / count,
            "negation": sum(negated) / count}


def run_arm(args: argparse.Namespace, name: str, debias: bool, zero_shot: bool) -> dict:
    folder = Path(args.work_dir) / name
    command = [sys.executable, "-m", "plmkit.cli", "generate", "--spec", "nli", "--n", str(args.n),
               "--generator", args.generator, "--eval", str(MNLI), "--max-eval-samples", str(args.max_eval_samples),
               "--no-supervised", "--task-model", args.task_model, "--learning-rate", str(args.learning_rate),
               "--epochs", str(args.epochs), "--generation-batch-size", str(args.batch_size),
               "--chunk-size", str(args.chunk_size), "--output-dir", str(folder), "--no-progress"]
    command += ["--self-debias", "--debias-decay", str(args.debias_decay)] if debias else []
    command += [] if zero_shot else ["--no-zero-shot"]
    command += ["--resume"] if (folder / "config.json").is_file() else []
    load, started = os.getloadavg()[0], time.perf_counter()
    subprocess.run(command, check=True)
    metrics = json.loads((folder / "metrics.json").read_text())
    return {"command": " ".join(command[1:]), "seconds": time.perf_counter() - started,
            "load_average_1min": [load, os.getloadavg()[0]], "metrics": metrics, "folder": str(folder)}


def kept_rows(folder: Path, spec) -> list[dict]:
    from plmkit.generation import filter_samples, iter_raw

    kept, _ = filter_samples(list(iter_raw(folder / "generation")), spec.filters)
    return kept


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=600)
    parser.add_argument("--generator", default="smollm2-135m")
    parser.add_argument("--debias-decay", type=float, default=100.0)
    parser.add_argument("--max-eval-samples", type=int, default=1000)
    parser.add_argument("--task-model", default="minilm-l6")
    parser.add_argument("--learning-rate", type=float, default=5e-5)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=120)
    parser.add_argument("--chunk-size", type=int, default=12)
    parser.add_argument("--work-dir", default="/tmp/self-debias")
    parser.add_argument("--output", default="scripts/results/bench_self_debias.json")
    args = parser.parse_args()

    from plmkit.backbones import load_causal_lm
    from plmkit.generation import load_spec
    from plmkit.generation.zeroshot import label_agreement

    spec = load_spec("nli")
    result: dict = {"settings": vars(args), "arms": {}}
    for name, debias in (("plain", False), ("self_debias", True)):
        result["arms"][name] = run_arm(args, name, debias, zero_shot=name == "plain")
    backbone = load_causal_lm(args.generator)
    for arm in result["arms"].values():
        kept = kept_rows(Path(arm["folder"]), spec)
        agree = label_agreement(backbone, spec, kept)
        arm["per_label"] = {}
        for label in spec.labels:
            rows = [row for row in kept if row["label"] == label]
            flags = [bool(a) for a, row in zip(agree, kept, strict=True) if row["label"] == label]
            arm["per_label"][label] = {**copy_stats(rows), "zero_shot_agrees": sum(flags) / max(1, len(flags))}
        arm["zero_shot_agrees"] = float(agree.mean()) if len(agree) else 0.0
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(result, indent=2))
    _print(result, spec.labels)


def _print(result: dict, labels: list[str]) -> None:
    from plmkit.report import format_table

    plain = result["arms"]["plain"]["metrics"]
    zero = plain.get("zero_shot", {}).get("accuracy")
    rows = []
    for name, arm in result["arms"].items():
        m = arm["metrics"]
        gen, syn = m["generation"], m["synthetic"]
        rows.append([name, round(gen["samples_per_s"], 2), sum(syn["sizes"].values()),
                     round(100 * arm["zero_shot_agrees"], 1),
                     round(100 * m["synthetic_model"]["validation"]["accuracy"], 2),
                     round(100 * m["synthetic_model"]["test"]["accuracy"], 2)])
    print(format_table(rows, ["arm", "samples/s", "kept", "zero-shot agrees %", "MNLI val acc", "MNLI test acc"],
                       title=f"nli spec, n = {result['settings']['n']}; zero-shot prompting on MNLI val: "
                             f"{100 * zero:.2f}" if zero is not None else "nli spec"))
    rows = [[name, label, s["samples"], round(100 * s["premise_word_share"], 1), round(100 * s["near_copy"], 1),
             round(100 * s["negation"], 1), round(100 * s["zero_shot_agrees"], 1)]
            for name, arm in result["arms"].items() for label, s in arm["per_label"].items()]
    print(format_table(rows, ["arm", "label", "kept", "premise words %", "near copies %", "negation %",
                              "zero-shot agrees %"], title="kept samples per label"))


if __name__ == "__main__":
    main()
