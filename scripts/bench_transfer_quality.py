"""Transfer quality on GLUE-format tasks: single adapter, full fine-tuning, AdapterFusion, ScaLearn x4.

Target `sst2`; sources the other GLUE tasks in the shared benchmark data (`cola`, `stsb` as
regression, `qqp`, `mnli`, `qnli`) plus the target's own adapter; the bundled MiniLM; several seeds.
Tasks that ship one split only (`qqp` train, `mnli` / `qnli` validation) are cut 80/10/10 with
`--data-seed`, and `sst2`'s test split is carved from its train file with the same seed; all of it
is recorded in the run folder's config.json. This is `plmkit transfer --compare all` with the
GLUE paths filled in:

    python scripts/bench_transfer_quality.py                      # CPU: documented subsample
    python scripts/bench_transfer_quality.py --full               # GPU: full files

The data folder defaults to ../shared/data/glue next to the repository (pass --data to change it).
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import asdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SOURCES = ("cola", "stsb", "qqp", "mnli", "qnli")
CPU_SUBSAMPLE = {"max_train_samples": 1000, "max_eval_samples": 1000, "source_max_train_samples": 2000,
                 "source_max_eval_samples": 500, "epochs": 2, "max_length": 64}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "glue"))
    parser.add_argument("--seeds", default="1,2,3")
    parser.add_argument("--compare", default="all")
    parser.add_argument("--full", action="store_true", help="use the full files (for a GPU)")
    parser.add_argument("--backbone", default="minilm-l6")
    parser.add_argument("--output-dir", default=str(ROOT / "runs" / "bench_transfer_quality"))
    parser.add_argument("--out", default=str(ROOT / "scripts" / "results" / "bench_transfer_quality.json"))
    args = parser.parse_args()
    data = Path(args.data)
    missing = [t for t in (*SOURCES, "sst2") if not (data / t).is_dir()]
    if missing:
        sys.exit(f"GLUE folders missing under {data}: {', '.join(missing)} (pass --data)")

    from plmkit.cliargs import quiet_libraries
    from plmkit.mtl.pipeline import TransferSetup, run_transfer
    from plmkit.report import format_table
    from plmkit.runs import RunFolder
    from plmkit.trainer import TrainerConfig

    quiet_libraries()
    limits = {} if args.full else CPU_SUBSAMPLE
    setup = TransferSetup(
        sources=",".join(str(data / t) for t in SOURCES), target=str(data / "sst2"), compare=args.compare,
        seeds=args.seeds, backbone=args.backbone, max_length=limits.get("max_length", 128),
        max_train_samples=limits.get("max_train_samples", 0), max_eval_samples=limits.get("max_eval_samples", 0),
        source_max_train_samples=limits.get("source_max_train_samples", 0),
        source_max_eval_samples=limits.get("source_max_eval_samples", 0),
        source_epochs=1,  # the stage-1 budget the published table was measured with
    )
    run = RunFolder(args.output_dir)
    run.start_log()
    trainer = TrainerConfig(output_dir=str(run.path), epochs=limits.get("epochs", 3), batch_size=32,
                            progress=False, save_checkpoints=False)
    metrics = run_transfer(setup, trainer, run)
    run.stop_log()
    rows = [[r["method"], f"{100 * r['test_mean']:.2f} ± {100 * r['test_std']:.2f}",
             f"{100 * r['validation_mean']:.2f}", r["transfer_parameters"], f"{r['train_time_s']:.0f}"]
            for r in metrics["summary"]]
    print(format_table(rows, ["method", "sst2 test acc", "validation acc", "transfer params", "train s"],
                       title=f"target sst2, sources {', '.join(SOURCES)} + sst2; seeds {args.seeds}; "
                             + ("full files" if args.full else f"CPU subsample {CPU_SUBSAMPLE}")))
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"setup": asdict(setup), "subsample": limits, "summary": metrics["summary"],
                               "command": " ".join(sys.argv), "run_folder": str(run.path)}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
