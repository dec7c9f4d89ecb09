"""ZeroGen benchmark: generation throughput vs a one-prompt-at-a-time pipeline, and real-task accuracy.

Throughput: accepted samples/s (after the ZeroGen filters) of ``plmkit.generation.synthesise``
(batched, KV cache) against a loop calling ``transformers.pipeline("text-generation")`` on one
prompt at a time with the same sampling settings, in the same process on the same prompts' spec.

Accuracy: a BiLSTM trained on the first n synthetic samples (for each --sizes n; selected on a
synthetic validation split) scored on real validation sets, next to zero-shot prompting of the
generator and the same BiLSTM trained on the real training split. Prints a table, writes JSON.

    python scripts/bench_zerogen.py --sizes 1000 --max-eval-samples 400 --naive-samples 8
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import pandas as pd

SST2 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "glue" / "sst2"


def naive_pipeline(backbone, spec, count: int, config) -> dict:
    """One prompt per call through transformers' text-generation pipeline; accepted samples/s."""
    from transformers import pipeline

    from plmkit.generation import filter_samples

    pipe = pipeline("text-generation", model=backbone.model, tokenizer=backbone.tokenizer, device="cpu")
    label = spec.labels
    samples, started = [], time.perf_counter()
    for i in range(count):
        prompt = spec.prompt(label[i % len(label)], "The Matrix")
        out = pipe(prompt, do_sample=True, top_p=config.top_p, top_k=0, temperature=config.temperature,
                   max_new_tokens=config.max_new_tokens, return_full_text=False)
        samples.append({"raw": out[0]["generated_text"], "label": label[i % len(label)], "condition": "The Matrix"})
    seconds = time.perf_counter() - started
    kept, counts = filter_samples(samples, spec.filters)
    return {"generated": count, "accepted": len(kept), "seconds": seconds, "accepted_per_s": len(kept) / seconds}


def synthetic_task(rows, spec, size: int, seed: int):
    from plmkit.generation import filter_samples
    from plmkit.generation.dataset import split_rows
    from plmkit.tasks import task_from_frames

    kept, counts = filter_samples(rows[:size], spec.filters)
    splits = split_rows(kept, spec.labels, 0.1, seed)
    frames = {s: pd.DataFrame({"text": [r["text"] for r in rs], "label": [r["label"] for r in rs]})
              for s, rs in splits.items()}
    task = task_from_frames(f"synthetic-{size}", frames["train"], frames["validation"], frames["test"],
                            label_names=spec.labels, seed=seed)
    return task, counts


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--generator", default="smollm2-135m")
    parser.add_argument("--sizes", default="1000", help="comma-separated synthetic set sizes (samples generated)")
    parser.add_argument("--samples-per-condition", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--naive-samples", type=int, default=8)
    parser.add_argument("--max-eval-samples", type=int, default=400)
    parser.add_argument("--supervised-train-samples", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--loss", default="ce")
    parser.add_argument("--throughput-only", action="store_true", help="skip the accuracy part")
    parser.add_argument("--output", default="scripts/results/bench_zerogen.json")
    args = parser.parse_args()

    from plmkit.backbones import load_causal_lm
    from plmkit.cliargs import quiet_libraries
    from plmkit.generation import GenerationConfig, TaskModelConfig, iter_raw, load_spec, synthesise
    from plmkit.generation.jobs import train_task_model
    from plmkit.generation.zeroshot import zero_shot_accuracy
    from plmkit.tasks import load_task
    from plmkit.trainer import TrainerConfig

    quiet_libraries()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    spec = load_spec("sentiment")
    backbone = load_causal_lm(args.generator)
    config = GenerationConfig(n=max(sizes), samples_per_condition=args.samples_per_condition)
    result: dict = {"settings": vars(args), "generation": asdict_(config)}

    result["naive"] = naive_pipeline(backbone, spec, args.naive_samples, config)
    _save(result, args.output)  # each phase is kept as soon as it is measured
    folder = Path(tempfile.mkdtemp(prefix="zerogen-bench-"))
    started = time.perf_counter()
    stats = synthesise(backbone, spec, config, folder, batch_size=args.batch_size, progress=True)
    rows = list(iter_raw(folder))
    result["batched"] = {**stats, "with_conditions_seconds": time.perf_counter() - started}
    kept_all = synthetic_task(rows, spec, max(sizes), 0)[1]["kept"]
    result["batched"].update(accepted=kept_all, accepted_per_s=kept_all / stats["seconds"])
    result["speedup_accepted_per_s"] = result["batched"]["accepted_per_s"] / result["naive"]["accepted_per_s"]
    _save(result, args.output)
    if args.throughput_only:
        print(json.dumps(result, indent=2, default=str))
        return

    real = {"rotten-tomatoes": load_task("rotten-tomatoes", max_eval_samples=args.max_eval_samples,
                                         max_train_samples=args.supervised_train_samples),
            "sst2": load_task(str(SST2), label_names=spec.labels, max_eval_samples=args.max_eval_samples,
                              max_train_samples=args.supervised_train_samples)}
    trainer = TrainerConfig(output_dir=str(folder / "train"), epochs=args.epochs, batch_size=32, learning_rate=1e-3,
                            progress=False, save_checkpoints=False)
    model_config = TaskModelConfig()
    result["accuracy"] = {}
    for name, task in real.items():
        entry = {"zero_shot": zero_shot_accuracy(backbone, spec, task, "validation")["accuracy"]}
        _, _, sup = train_task_model(task, model_config, replace(trainer, output_dir=str(folder / f"sup-{name}")),
                                     "ce", 64, folder / f"sup-{name}", task)
        entry["supervised"] = sup["validation"]["accuracy"]
        for size in sizes:
            synth, counts = synthetic_task(rows, spec, size, 0)
            _, _, scores = train_task_model(synth, model_config, trainer, args.loss, 64,
                                            folder / f"syn-{name}-{size}", task)
            entry[f"synthetic_{size}"] = scores["validation"]["accuracy"]
            entry[f"synthetic_{size}_filter_counts"] = counts
        result["accuracy"][name] = entry
        _save(result, args.output)
    print(json.dumps(result, indent=2, default=str))


def _save(result: dict, output: str) -> None:
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(json.dumps(result, indent=2, default=str))


def asdict_(config) -> dict:
    from dataclasses import asdict

    return asdict(config)


if __name__ == "__main__":
    main()
