"""SCT benchmark: small MiniLM students after SCT, SCT distillation, SimCSE and MSE distillation on STS-B test.

Rows: the raw 6-layer MiniLM, the raw student (MiniLM cut to its first ``--layers``), the teacher, and the
student after each method, all trained on the same unlabelled sentences with the same trainer settings
(steps, batch, learning rate). Evaluation: Spearman x100 of cosine similarity on
``../shared/data/sts/stsb_test.jsonl`` (never trained on), and on the GLUE STS-B validation pairs (also never
trained on; the set to choose settings by, ``--no-validation`` skips it). Training sentences: the first sentence of each
GLUE STS-B training pair (``--sentences first``) or every distinct sentence of both columns
(``--sentences all``, 10,536), labels unused, subsampled with ``--train-samples`` for CPU runs. Also
reports training time, sentences/s and encoder parameter counts.

    python scripts/bench_sct.py --train-samples 1500 --epochs 2
    python scripts/bench_sct.py --sentences all --train-samples 0 --teacher minilm-l6 --projector linear
    python scripts/bench_sct.py --projector mlp --no-align-teacher-map   # the paper's random projector

Runs ``plmkit embed`` (the CLI) into ``--run-dir``, then prints a table and writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"


def parse() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train-samples", type=int, default=2000, help="training sentences (0: all)")
    parser.add_argument("--sentences", choices=("first", "all"), default="first",
                        help="first: text_a of each STS-B training pair; all: every distinct sentence of both columns")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--learning-rate", type=float, default=1e-4)
    parser.add_argument("--layers", default="3", help="student layers kept from MiniLM")
    parser.add_argument("--teacher", default="mpnet-base")
    parser.add_argument("--methods", default="sct,sct-distill,simcse,mse")
    parser.add_argument("--augment", default="delete")
    parser.add_argument("--projector", default="residual", help="SCT online projector: residual, mlp or linear")
    parser.add_argument("--align-teacher-map", action=argparse.BooleanOptionalAction, default=True,
                        help="start the student->teacher width maps (sct-distill, mse) from a ridge regression")
    parser.add_argument("--temperature", type=float, default=None, help="SCT online temperature (none: paper's)")
    parser.add_argument("--reference-temperature", type=float, default=None,
                        help="SCT reference temperature (none: the paper's)")
    parser.add_argument("--max-length", type=int, default=64)
    parser.add_argument("--validation", action=argparse.BooleanOptionalAction, default=True,
                        help="also score every model on the STS-B validation pairs (for choosing settings "
                             "without looking at test)")
    parser.add_argument("--run-dir", default=str(ROOT / "runs" / "bench_sct"))
    parser.add_argument("--out", default=str(ROOT / "scripts" / "results" / "bench_sct.json"))
    return parser.parse_args()


def full_minilm_score(eval_sets: list[Path], max_length: int) -> dict:
    from plmkit.backbones import load_encoder
    from plmkit.compress.sct_train import load_eval_pairs
    from plmkit.embeddings import STSEvaluator

    backbone = load_encoder("minilm-l6")
    started = time.perf_counter()
    scores = {str(path): 100 * STSEvaluator(load_eval_pairs(str(path)), backbone.tokenizer, "mean",
                                            max_length=max_length)(backbone.model)["spearman"] for path in eval_sets}
    return {"spearman": scores,
            "encoder_params": sum(p.numel() for p in backbone.model.parameters()),
            "eval_s": time.perf_counter() - started}


def main() -> int:
    args = parse()
    from plmkit.cli import main as plmkit_main
    from plmkit.compress.sct_job import summary_rows
    from plmkit.report import format_table

    test = SHARED / "sts" / "stsb_test.jsonl"
    eval_sets = [test] + ([SHARED / "glue" / "stsb" / "validation.jsonl"] if args.validation else [])
    train = SHARED / "glue" / "stsb" / "train.jsonl"
    # all: both sentences of every row, row by row; the job keeps each distinct sentence once
    data = ["--data", str(train), "--text-fields", "text_a,text_b" if args.sentences == "all" else "text_a"]
    temperatures = [flag for name, value in (("--temperature", args.temperature),
                                             ("--reference-temperature", args.reference_temperature))
                    if value is not None for flag in (name, str(value))]
    argv = ["embed", "--model", "minilm-l6", "--layers", args.layers, "--teacher", args.teacher,
            *data, *temperatures, "--eval", ",".join(map(str, eval_sets)), "--methods", args.methods,
            "--max-train-samples", str(args.train_samples), "--epochs", str(args.epochs),
            "--batch-size", str(args.batch_size), "--learning-rate", str(args.learning_rate),
            "--augment", args.augment, "--projector", args.projector,
            "--align-teacher-map" if args.align_teacher_map else "--no-align-teacher-map",
            "--max-length", str(args.max_length), "--no-progress",
            "--output-dir", args.run_dir, "--overwrite"]
    started = time.perf_counter()
    code = plmkit_main(argv)
    if code:
        return code
    metrics = json.loads((Path(args.run_dir) / "metrics.json").read_text())
    metrics["models"] = {"raw minilm-l6 (6 layers)": full_minilm_score(eval_sets, args.max_length), **metrics["models"]}
    rows, header = summary_rows(metrics)
    print("\n" + format_table(rows, header, title="STS-B, Spearman x100 (CPU subsample)"))
    result = {"command": "python scripts/bench_sct.py " + " ".join(sys.argv[1:]), "plmkit_embed_argv": argv,
              "settings": vars(args), "wall_time_s": time.perf_counter() - started, "metrics": metrics,
              "hardware": "CPU only (shared machine, 2 cores); no GPU this session"}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
