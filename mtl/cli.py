"""``plmkit adapters ...`` (and later ``plmkit transfer``): parse, call the library, print."""

from __future__ import annotations

import argparse
from pathlib import Path

from plmkit.cliargs import EPILOG, add_common, add_dataclass_arguments, build_dataclass, quiet_libraries
from plmkit.report import format_table


def cmd_adapters_train(args: argparse.Namespace) -> int:
    from plmkit.mtl.adapters import AdapterConfig
    from plmkit.mtl.stage1 import TaskSetup, train_adapter
    from plmkit.runs import RunFolder
    from plmkit.trainer import TrainerConfig

    quiet_libraries()
    setup = build_dataclass(TaskSetup, args)
    run = RunFolder.create("adapters", args.output_dir, label=Path(setup.task).name)
    run.start_log()
    try:
        trainer = build_dataclass(TrainerConfig, args, output_dir=str(run.path))
        metrics = train_adapter(setup, build_dataclass(AdapterConfig, args), trainer, run)
    finally:
        run.stop_log()
    _print_adapter_summary(metrics, run.path)
    return 0


def _print_adapter_summary(metrics: dict, run_path: Path) -> None:
    from plmkit import distributed

    if not distributed.is_main_process():
        return
    keys = [k for k in metrics["validation"] if k != "loss"]
    rows = [[split] + [metrics[split][k] for k in keys] for split in ("validation", "test")]
    title = f"adapter on {metrics['task']} ({metrics['backbone']})"
    print("\n" + format_table(rows, ["split"] + keys, title=title))
    train = metrics["train"]
    print(format_table([[metrics["adapter_parameters"], metrics["trainable_parameters"], train["global_step"],
                         train["best_step"] or 0, f"{train['samples_per_s']:.1f}", f"{metrics['wall_time_s']:.0f}"]],
                       ["adapter params", "trainable", "steps", "best step", "train samples/s", "wall s"]))
    print(f"\nrun folder: {run_path}  (metrics.json, adapter/, training_curves.png, run.log)")


def register(sub: argparse._SubParsersAction) -> None:
    from plmkit.mtl.adapters import AdapterConfig
    from plmkit.mtl.stage1 import TaskSetup
    from plmkit.trainer import TrainerConfig

    adapters = sub.add_parser("adapters", help="stage-1 bottleneck adapters").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    train = adapters.add_parser("train", help="train an adapter + head on a task over a frozen backbone",
                                epilog=EPILOG)
    add_common(train)
    add_dataclass_arguments(train, TaskSetup, title="task and backbone")
    add_dataclass_arguments(train, AdapterConfig, title="adapter")
    add_dataclass_arguments(train, TrainerConfig, title="training",
                            defaults={"output_dir": None, "learning_rate": 1e-3, "epochs": 3,
                                      "early_stopping_patience": 3})
    train.set_defaults(func=cmd_adapters_train, _parser=train)
