"""Peer row: ``peft``'s prompt tuning beside plmkit's ``--method prompt`` (no transfer), same budget.

For every target and seed both rows see the same split (``load_task(spec, seed=0, 200 train, 300
validation/test)``, the call ``plmkit transfer`` makes for the target), the same tokenised rows
(``TaskData``, max length 48), the same frozen backbone (minilm-l6), 10 prompt vectors initialised
from randomly drawn vocabulary rows, and the same training: plmkit's one trainer (AdamW, lr 3e-2,
no weight decay, no warm-up, linear decay to zero, gradient clipping at norm 1, batch 16, 2 epochs,
the best validation epoch kept), the task loss (CE; MSE for a regression target) and the target's
primary metric on its test rows (accuracy; mean of Pearson and Spearman for stsb).

* plmkit: ``run_transfer`` with ``--method prompt``, exactly the no-transfer row of
  ``scripts/bench_panda.py``: the prompt is prepended to the word embeddings and cut off the
  output; a fresh head (dense + tanh + linear) mean-pools the real tokens.
* peft: ``AutoModelForSequenceClassification`` from the same local folder wrapped by
  ``get_peft_model(PromptTuningConfig(task_type=SEQ_CLS, num_virtual_tokens=10,
  prompt_tuning_init=SAMPLE_VOCAB))``. peft prepends the prompt to the word embeddings too, but the
  model's own head reads position 0, which is now the first virtual token, through BERT's
  pretrained pooler (frozen); peft trains the prompt and the final linear layer (``classifier``).

The peft model is trained by plmkit's trainer (a thin module returns its logits), so the two rows
differ only in what the two libraries build, not in the loop. ``train s`` is the wall time of
``train_classifier`` for each (per-epoch validation included), on whatever the machine shares.

    .venv/bin/pip install peft==0.21.2          # a benchmark peer only, not a plmkit dependency
    nice -n 15 env OMP_NUM_THREADS=1 .venv/bin/python scripts/bench_panda_peft.py
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from bench_panda import TASKS  # the same task table (and split specs) as the PANDA benchmark
from torch import nn

from plmkit import distributed
from plmkit.backbones import load_encoder
from plmkit.mtl.pipeline import TransferSetup, run_transfer
from plmkit.runs import RunFolder
from plmkit.tasks import load_task
from plmkit.textclf import TaskData, train_classifier
from plmkit.trainer import TrainerConfig, seed_everything

TARGETS = "rotten-tomatoes,sst2,rt-subjectivity,stsb"


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backbone", default="minilm-l6")
    parser.add_argument("--targets", default=TARGETS, help=f"of {', '.join(TASKS)}")
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--train", type=int, default=200, help="target training rows")
    parser.add_argument("--eval", type=int, default=300, help="target validation/test rows")
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--prompt-length", type=int, default=10)
    parser.add_argument("--max-length", type=int, default=48)
    parser.add_argument("--learning-rate", type=float, default=3e-2)
    parser.add_argument("--out", default="scripts/results/panda_peft_peer.json")
    return parser.parse_args()


def import_peft():
    try:
        import peft
    except ImportError:
        sys.exit("this benchmark compares against peft, which plmkit does not depend on: "
                 ".venv/bin/pip install peft==0.21.2")
    return peft


class LogitsOnly(nn.Module):
    """A Hugging Face sequence classifier as plmkit's trainer and evaluator call it: ``forward(**batch) -> logits``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor | None = None, **_) -> torch.Tensor:
        return self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids).logits


def trainer_config(args: argparse.Namespace, folder: Path, seed: int) -> TrainerConfig:
    """What ``run_method`` trains the plmkit row with (its base config, this seed and learning rate)."""
    return TrainerConfig(output_dir=str(folder), epochs=args.epochs, batch_size=args.batch_size, progress=False,
                         save_checkpoints=False, seed=seed, learning_rate=args.learning_rate, metric=None)


def plmkit_prompt(args: argparse.Namespace, work: Path, target: str) -> list[dict]:
    """The no-transfer row of ``bench_panda.py``: ``--method prompt`` through ``run_transfer``."""
    setup = TransferSetup(sources="", target=TASKS[target], method="prompt", compare="prompt", seeds=args.seeds,
                          backbone=args.backbone, store=str(work / "store"), learning_rate=args.learning_rate,
                          max_length=args.max_length, max_train_samples=args.train, max_eval_samples=args.eval,
                          baseline=False, include_target_adapter=True,
                          method_options={"prompt_length": args.prompt_length})
    base = TrainerConfig(epochs=args.epochs, batch_size=args.batch_size, progress=False, save_checkpoints=False)
    metrics = run_transfer(setup, base, RunFolder.create("bench-panda-peft", str(work / target), label=target))
    return [{"seed": r["seed"], "test": r["test"][metrics["metric"]], "trainable_parameters": r["trainable_parameters"],
             "train_time_s": r["train_time_s"]} for r in metrics["runs"]]


def peft_prompt(args: argparse.Namespace, work: Path, target: str, seed: int, backbone, data: TaskData) -> dict:
    """peft's prompt tuning (SEQ_CLS) on the same folder, rows and trainer."""
    peft = import_peft()
    from transformers import AutoModelForSequenceClassification

    seed_everything(seed)
    model = AutoModelForSequenceClassification.from_pretrained(backbone.model.name_or_path,
                                                               num_labels=data.task.num_labels)
    config = peft.PromptTuningConfig(task_type=peft.TaskType.SEQ_CLS, num_virtual_tokens=args.prompt_length,
                                     prompt_tuning_init=peft.PromptTuningInit.SAMPLE_VOCAB)
    classifier = LogitsOnly(peft.get_peft_model(model, config))
    started = time.perf_counter()
    train_classifier(classifier, data, trainer_config(args, work / f"peft-{target}-seed{seed}", seed))
    train_time = time.perf_counter() - started
    trainable = {n: p.numel() for n, p in classifier.named_parameters() if p.requires_grad}
    return {"seed": seed, "test": data.evaluate(classifier, "test")[data.task.metric],
            "trainable_parameters": sum(trainable.values()), "trainable": sorted(trainable),
            "train_time_s": train_time}


def main() -> None:
    args = parse()
    import_peft()
    distributed.init_process_group()  # once, untimed: else the first timed run pays DeepSpeed's import
    started = time.perf_counter()
    work = Path(tempfile.mkdtemp(prefix="bench-panda-peft-"))
    backbone = load_encoder(args.backbone)
    rows = []
    for target in args.targets.split(","):
        task = load_task(TASKS[target], seed=0, max_train_samples=args.train, max_eval_samples=args.eval)
        data = TaskData(task, backbone.tokenizer, args.max_length, model_config=backbone.config)
        ours = plmkit_prompt(args, work, target)
        theirs = [peft_prompt(args, work, target, int(s), backbone, data) for s in args.seeds.split(",")]
        rows.append({"target": target, "metric": task.metric, "plmkit": ours, "peft": theirs})
        print(json.dumps({"target": target, "plmkit": [r["test"] for r in ours],
                          "peft": [r["test"] for r in theirs]}), flush=True)
        write(args, {"args": vars(args), "rows": rows, "partial": True, "wall_time_s": time.perf_counter() - started})
    out = {"args": vars(args), "rows": rows, "wall_time_s": time.perf_counter() - started}
    write(args, out)
    print_table(out)
    distributed.shutdown()


def write(args: argparse.Namespace, out: dict) -> None:
    """Written after every target, so a run cut short keeps what it measured (``partial``)."""
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))


def _fmt(values: list[float], scale: float = 100.0, digits: int = 1) -> str:
    return f"{scale * statistics.fmean(values):.{digits}f} ± {scale * statistics.pstdev(values):.{digits}f}"


def print_table(out: dict) -> None:
    print("\n| target | metric | plmkit prompt | peft prompt tuning | trainable params (plmkit / peft) "
          "| train s (plmkit / peft) | time ratio peft/plmkit |\n|---|---|---|---|---|---|---|")
    for row in out["rows"]:
        ours, theirs = row["plmkit"], row["peft"]
        time_ours = statistics.fmean(r["train_time_s"] for r in ours)
        time_theirs = statistics.fmean(r["train_time_s"] for r in theirs)
        print(f"| {row['target']} | {row['metric']} | {_fmt([r['test'] for r in ours])} "
              f"| {_fmt([r['test'] for r in theirs])} "
              f"| {ours[0]['trainable_parameters']:,} / {theirs[0]['trainable_parameters']:,} "
              f"| {_fmt([r['train_time_s'] for r in ours], 1.0)} / {_fmt([r['train_time_s'] for r in theirs], 1.0)} "
              f"| {time_theirs / time_ours:.2f} |")
    print(f"\nwall time {out['wall_time_s']:.0f} s")


if __name__ == "__main__":
    main()
