"""ZeroGen benchmark: generation throughput vs a one-prompt-at-a-time pipeline, and real-task accuracy.

Throughput: accepted samples/s (after the ZeroGen filters) of ``plmkit.generation.synthesise``
(batched, KV cache, rows leave the batch at their stop string) against a loop calling
``transformers.pipeline("text-generation")`` on one prompt at a time, in the same process: same
model, the same prompts (the run's own conditions, in the batched run's order), the same sampling
settings (temperature, top-p, top-k, max_new_tokens) and the same stop rule (a row ends once its
new text, leading whitespace aside, holds a closing quote or line break; the pipeline gets it as a
``StoppingCriteria``). Conditions are made before either is timed.

Accuracy: a BiLSTM trained on the first n synthetic samples (for each --sizes n; selected on a
synthetic validation split) scored on real validation sets, next to zero-shot prompting of the
generator and the same BiLSTM trained on the real training split (selected on 10% of it held out).

The raw samples live in --data-dir (resumable): a later run with the same generation settings
reuses them and times nothing, and --max-chunks lets one run make only the first chunks of a
larger --n. Prints a table, writes JSON.

    python scripts/bench_zerogen.py --n 1000 --naive-samples 16 --throughput-only --data-dir /tmp/zg/n1000
    python scripts/bench_zerogen.py --n 1000 --sizes 1000 --naive-samples 0 --losses ce,sce --data-dir /tmp/zg/n1000

(the second reuses the first's samples; docs/zerogen.md has the commands behind the published tables).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

import pandas as pd

SST2 = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "glue" / "sst2"


class _StopCriteria:
    """The generate() stop rule as a ``transformers`` stopping criterion for one pipeline call."""

    def __init__(self, tokenizer, stop: list[str], prompt_width: int) -> None:
        self.tokenizer, self.stop, self.prompt_width = tokenizer, stop, prompt_width

    def __call__(self, input_ids, scores, **kwargs):
        import torch

        from plmkit.textgen import stop_index

        texts = self.tokenizer.batch_decode(input_ids[:, self.prompt_width:], skip_special_tokens=True)
        return torch.tensor([stop_index(text, self.stop) is not None for text in texts], device=input_ids.device)


def naive_pipeline(backbone, spec, prompts: list[tuple[str, str, str]], config) -> dict:
    """One prompt per call through transformers' text-generation pipeline; accepted samples/s."""
    from transformers import StoppingCriteriaList, pipeline

    from plmkit.generation import filter_samples, stop_strings

    pipe = pipeline("text-generation", model=backbone.model, tokenizer=backbone.tokenizer, device="cpu")
    stop = stop_strings(spec.filters.cut_at_quote)
    samples, started, load = [], time.perf_counter(), os.getloadavg()[0]
    for prompt, label, condition in prompts:
        width = len(backbone.tokenizer(prompt)["input_ids"])
        criteria = StoppingCriteriaList([_StopCriteria(backbone.tokenizer, stop, width)])
        out = pipe(prompt, do_sample=True, top_p=config.top_p, top_k=config.top_k, temperature=config.temperature,
                   max_new_tokens=config.max_new_tokens, return_full_text=False, stopping_criteria=criteria)
        samples.append({"raw": out[0]["generated_text"], "label": label, "condition": condition})
    seconds = time.perf_counter() - started
    kept, counts = filter_samples(samples, spec.filters)
    return {"generated": len(prompts), "accepted": len(kept), "seconds": seconds, "accepted_per_s": len(kept) / seconds,
            "samples_per_s": len(prompts) / seconds, "load_average_1min": [load, os.getloadavg()[0]],
            "filter_counts": counts}


def synthetic_task(rows, spec, size: int, seed: int, agree=None):
    from plmkit.generation.dataset import filter_and_split
    from plmkit.tasks import task_from_frames

    # agree (--consistency): the generator's zero-shot prompting must pick the sample's label
    splits, counts = filter_and_split(rows[:size], spec, 0.1, seed, agree)
    frames = {s: pd.DataFrame({"text": [r["text"] for r in rs], "label": [r["label"] for r in rs]})
              for s, rs in splits.items()}
    task = task_from_frames(f"synthetic-{size}", frames["train"], frames["validation"], frames["test"],
                            label_names=spec.labels, seed=seed)
    return task, counts


def supervised_task(task, labels: list[str], seed: int):
    """The real training rows, 10% of them held out for model selection, the real validation as test."""
    from plmkit.tasks import task_from_frames

    field = task.text_fields[-1]

    def frame(data):
        return pd.DataFrame({"text": list(data[field]), "label": [labels[i] for i in data[task.label_field]]})

    return task_from_frames(f"{task.name}-supervised", frame(task.train), None, frame(task.validation),
                            label_names=labels, seed=seed)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--generator", default="smollm2-135m")
    parser.add_argument("--n", type=int, default=None, help="samples the generation settings aim at "
                        "(default: the largest --sizes); fixes the conditions and chunks")
    parser.add_argument("--sizes", default="1000", help="comma-separated synthetic set sizes (first n samples)")
    parser.add_argument("--samples-per-condition", type=int, default=10)
    parser.add_argument("--chunk-size", type=int, default=12, help="prompts per chunk (rows = x samples/condition)")
    parser.add_argument("--batch-size", type=int, default=120)
    parser.add_argument("--max-chunks", type=int, default=None, help="make at most this many missing chunks")
    parser.add_argument("--data-dir", default=None, help="folder of the raw samples (reused; default: temporary)")
    parser.add_argument("--naive-samples", type=int, default=16, help="0: no pipeline baseline")
    parser.add_argument("--max-eval-samples", type=int, default=0, help="0: the whole validation split")
    parser.add_argument("--eval-tasks", default="rotten-tomatoes,sst2", help="real tasks to score on (of these two)")
    parser.add_argument("--supervised-train-samples", type=int, default=4000)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--task-model", default="lstm", help="lstm, transformer, or an encoder to fine-tune")
    parser.add_argument("--learning-rate", type=float, default=1e-3)
    parser.add_argument("--losses", default="ce", help="comma-separated losses for the synthetic runs (ce, sce, ...; "
                        "'none': no synthetic run)")
    parser.add_argument("--consistency", action="store_true",
                        help="also drop samples whose label the generator's zero-shot prompting does not pick "
                             "(plmkit generate --consistency); results keys get '_consistent'")
    parser.add_argument("--throughput-only", action="store_true", help="skip the accuracy part")
    parser.add_argument("--baselines", default="zero-shot,supervised", help="which baselines to run ('none': neither)")
    parser.add_argument("--output", default="scripts/results/bench_zerogen.json")
    args = parser.parse_args()

    from plmkit.backbones import load_causal_lm
    from plmkit.cliargs import quiet_libraries
    from plmkit.generation import GenerationConfig, TaskModelConfig, iter_raw, load_spec, synthesise
    from plmkit.generation.jobs import train_task_model
    from plmkit.generation.zerogen import _units, load_or_make_conditions
    from plmkit.generation.zeroshot import label_agreement, zero_shot_accuracy
    from plmkit.tasks import load_task
    from plmkit.textclf import TaskData
    from plmkit.trainer import TrainerConfig

    quiet_libraries()
    sizes = sorted(int(s) for s in args.sizes.split(","))
    spec = load_spec("sentiment")
    backbone = load_causal_lm(args.generator)
    config = GenerationConfig(n=args.n or max(sizes), samples_per_condition=args.samples_per_condition,
                              chunk_size=args.chunk_size)
    folder = Path(args.data_dir or tempfile.mkdtemp(prefix="zerogen-bench-"))
    folder.mkdir(parents=True, exist_ok=True)
    result: dict = {"settings": vars(args), "generation": asdict(config), "cpu_count": os.cpu_count(),
                    "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}

    started = time.perf_counter()
    conditions = load_or_make_conditions(folder, backbone, spec, config, args.batch_size)
    result["conditions_seconds"] = time.perf_counter() - started
    if args.naive_samples:
        units = _units(spec, conditions)
        prompts = [(spec.prompt(label, condition), label, condition)
                   for _, label, condition in units for _ in range(config.samples_per_condition)][:args.naive_samples]
        result["naive"] = naive_pipeline(backbone, spec, prompts, config)
        _report_naive(result["naive"])
        _save(result, args.output)  # each phase is kept as soon as it is measured
    before = {(r["chunk"], r["unit"], r["sample"]) for r in iter_raw(folder)} if (folder / "generation.json").is_file() \
        else set()
    load = os.getloadavg()[0]
    stats = synthesise(backbone, spec, config, folder, batch_size=args.batch_size, progress=True,
                       max_chunks=args.max_chunks)
    rows = list(iter_raw(folder))
    made = [r for r in rows if (r["chunk"], r["unit"], r["sample"]) not in before]
    result["batched"] = {**stats, "load_average_1min": [load, os.getloadavg()[0]], "rows_available": len(rows)}
    if made:
        from plmkit.generation import filter_samples

        kept, counts = filter_samples(made, spec.filters)
        result["batched"].update(accepted=len(kept), accepted_per_s=len(kept) / stats["seconds"], filter_counts=counts)
        if "naive" in result:
            result["speedup_accepted_per_s"] = result["batched"]["accepted_per_s"] / result["naive"]["accepted_per_s"]
        print(f"batched (batch {args.batch_size}): {len(made)} generated, {len(kept)} accepted in "
              f"{stats['seconds']:.1f} s -> {result['batched']['accepted_per_s']:.3f} accepted/s; "
              f"speed-up {result.get('speedup_accepted_per_s', float('nan')):.2f}x")
    _save(result, args.output)
    if args.throughput_only:
        return

    sizes = [s for s in sizes if s <= len(rows)]
    if not sizes:
        raise SystemExit(f"only {len(rows)} samples in {folder}; make more (drop --max-chunks) or ask smaller --sizes")
    limit = args.max_eval_samples or None
    loaders = {"rotten-tomatoes": lambda: load_task("rotten-tomatoes", max_eval_samples=limit,
                                                    max_train_samples=args.supervised_train_samples),
               "sst2": lambda: load_task(str(SST2), label_names=spec.labels, max_eval_samples=limit,
                                         max_train_samples=args.supervised_train_samples)}
    real = {name: loaders[name]() for name in args.eval_tasks.split(",")}
    trainer = TrainerConfig(output_dir=str(folder / "train"), epochs=args.epochs, batch_size=32,
                            learning_rate=args.learning_rate,
                            progress=False, save_checkpoints=False)
    model_config = TaskModelConfig(task_model=args.task_model)
    result["accuracy"] = {name: {"eval_rows": len(task.validation), "supervised_train_rows": len(task.train)}
                          for name, task in real.items()}
    work = Path(tempfile.mkdtemp(prefix="zerogen-train-"))
    baselines = args.baselines.split(",")
    losses = [] if args.losses == "none" else args.losses.split(",")
    for name, task in real.items():
        entry = result["accuracy"][name]
        if "zero-shot" in baselines:
            t = time.perf_counter()
            entry["zero_shot"] = zero_shot_accuracy(backbone, spec, task, "validation")["accuracy"]
            entry["zero_shot_seconds"] = time.perf_counter() - t
        if "supervised" in baselines:
            _, _, sup = train_task_model(supervised_task(task, spec.labels, 0), model_config, trainer, "ce", 64,
                                         work / f"sup-{name}", task)
            entry["supervised"] = sup["validation"]["accuracy"]
        _save(result, args.output)
        print(name, json.dumps(entry), flush=True)
    tag = "_consistent" if args.consistency else ""
    agree = (lambda kept: label_agreement(backbone, spec, kept)) if args.consistency else None
    for size in sizes:
        synth, counts = synthetic_task(rows, spec, size, 0, agree)
        result[f"synthetic_{size}{tag}_filter_counts"] = counts
        for loss in losses:
            model, tokenizer, scores = train_task_model(synth, model_config, trainer, loss, 64,
                                                        work / f"syn-{size}-{loss}")
            for name, task in real.items():  # one model per (size, loss), scored on every real task
                accuracy = TaskData(task, tokenizer, 64).evaluate(model, "validation")["accuracy"]
                result["accuracy"][name][f"synthetic_{size}{tag}_{loss}"] = accuracy
                result["accuracy"][name][f"synthetic_{size}{tag}_{loss}_synthetic_validation"] = \
                    scores["synthetic_validation"]["accuracy"]
            _save(result, args.output)
            print(size, loss, json.dumps({name: entry[f"synthetic_{size}{tag}_{loss}"]
                                          for name, entry in result["accuracy"].items()}), flush=True)
    _print_table(result, sizes, losses, tag)


def _print_table(result: dict, sizes: list[int], losses: list[str], tag: str = "") -> None:
    model = {"lstm": "BiLSTM"}.get(result["settings"]["task_model"], result["settings"]["task_model"])
    rows = [("zero-shot prompting of the generator", "zero_shot"), (f"{model}, real training split", "supervised")]
    kept = " label-consistent" if tag else ""
    rows += [(f"{model}, {size} synthetic{kept} ({loss})", f"synthetic_{size}{tag}_{loss}")
             for size in sizes for loss in losses]
    names = list(result["accuracy"])
    print("| method | " + " | ".join(names) + " |")
    print("|---|" + "---|" * len(names))
    for title, key in rows:
        if all(key in result["accuracy"][n] for n in names):
            print(f"| {title} | " + " | ".join(f"{100 * result['accuracy'][n][key]:.2f}" for n in names) + " |")


def _report_naive(naive: dict) -> None:
    print(f"naive pipeline: {naive['generated']} generated, {naive['accepted']} accepted in {naive['seconds']:.1f} s "
          f"-> {naive['accepted_per_s']:.3f} accepted/s", flush=True)


def _save(result: dict, output: str) -> None:
    Path(output).parent.mkdir(parents=True, exist_ok=True)
    Path(output).write_text(json.dumps(result, indent=2, default=str))


if __name__ == "__main__":
    main()
