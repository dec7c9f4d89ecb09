"""``plmkit adapters ...`` (and later ``plmkit transfer``): parse, call the library, print."""

from __future__ import annotations

import argparse
from pathlib import Path

from plmkit.cliargs import Flags, add_job_parser, build_dataclass
from plmkit.jobs import run_job
from plmkit.report import format_table


def cmd_adapters_train(args: argparse.Namespace) -> int:
    from plmkit.mtl.adapters import AdapterConfig
    from plmkit.mtl.stage1 import TaskSetup, train_adapter

    setup, adapter = build_dataclass(TaskSetup, args), build_dataclass(AdapterConfig, args)
    return run_job(args, "adapters", Path(setup.task).name,
                   lambda trainer, run: train_adapter(setup, adapter, trainer, run), _print_adapter_summary)


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
    register_transfer(sub)
    register_adapters(sub)
    register_transferability(sub)


def register_adapters(sub: argparse._SubParsersAction) -> None:
    from plmkit.mtl.adapters import AdapterConfig
    from plmkit.mtl.stage1 import TaskSetup
    from plmkit.trainer import TrainerConfig

    adapters = sub.add_parser("adapters", help="stage-1 bottleneck adapters").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    add_job_parser(
        adapters, "train", cmd_adapters_train,
        [Flags(TaskSetup, "task and backbone"), Flags(AdapterConfig, "adapter"),
         Flags(TrainerConfig, "training", defaults={"output_dir": None, "learning_rate": 1e-3, "epochs": 3,
                                                    "early_stopping_patience": 3})],
        help="train an adapter + head on a task over a frozen backbone")


# ------------------------------------------------------------------------------ transfer
def cmd_transfer(args: argparse.Namespace) -> int:
    from plmkit.mtl.pipeline import TransferSetup, run_transfer

    setup = build_dataclass(TransferSetup, args, method_options=_method_options(args))
    setup.methods()  # fail on an unknown method before any work
    # --learning-rate is the transfer setup's (None: each method's default); every stage sets its own
    return run_job(args, "transfer", Path(setup.target).name,
                   lambda trainer, run: run_transfer(setup, trainer, run), _print_transfer_summary,
                   trainer_defaults={"learning_rate": setup.learning_rate or setup.source_learning_rate})


def _print_transfer_summary(metrics: dict, run_path: Path) -> None:
    from plmkit import distributed

    if not distributed.is_main_process():
        return
    _print_source_quality(metrics.get("source_quality") or [])
    metric = metrics["metric"]
    with_gain = any("gain" in r for r in metrics["summary"])
    rows = [[r["method"], f"{r['test_mean']:.4f} ± {r['test_std']:.4f}"]
            + ([_gain(r)] if with_gain else [])
            + [f"{r['validation_mean']:.4f}", r["transfer_parameters"], r["trainable_parameters"],
               f"{r['train_time_s']:.0f}", f"{r['peak_memory_mb']:.0f}"] for r in metrics["summary"]]
    seeds = len(metrics["summary"][0]["seeds"])
    title = (f"{metrics['target']} ({metric}; test mean ± std over {seeds} seed(s)); sources: "
             + ", ".join(metrics["sources"] or ["-"]))
    gain_header = [f"gain vs {metrics.get('baseline')}"] if with_gain else []
    print("\n" + format_table(rows, ["method", f"test {metric}", *gain_header, "validation", "transfer params",
                                     "trainable", "train s", "peak MB"], title=title))
    plots = ", ".join(p for p in metrics["plots"].values() if p)
    print(f"\nrun folder: {run_path}  (metrics.json, config.json{', ' + plots if plots else ''}, run.log)")


def _gain(row: dict) -> str:
    if row.get("gain") is None:
        return "-"
    return f"{row['gain']:+.4f} ± {row['gain_std']:.4f}"


def _print_source_quality(qualities: list[dict]) -> None:
    """Each source's validation metric beside its constant (majority-class) baseline; weak ones flagged."""
    if not qualities:
        return
    rows = [[q["name"], q["metric"], f"{q['validation']:.4f}", f"{q['constant_baseline']:.4f}",
             "WEAK" if q["weak"] else "ok"] for q in qualities]
    print("\n" + format_table(rows, ["source", "metric", "validation", "constant baseline", "quality"],
                               title="stage-1 sources (weak: validation within "
                                     f"{qualities[0]['margin']:.2f} of the constant baseline)"))


def register_transfer(sub: argparse._SubParsersAction) -> None:
    from plmkit.mtl.pipeline import TransferSetup
    from plmkit.trainer import TrainerConfig

    add_job_parser(
        sub, "transfer", cmd_transfer,
        [Flags(TransferSetup, "transfer"), add_method_flags,
         Flags(TrainerConfig, "stage-2 training", exclude=("learning_rate", "seed", "metric", "greater_is_better"),
               defaults={"output_dir": None, "epochs": 5, "batch_size": 16})],
        help="stage 1 (train or reuse source adapters) -> stage 2 (fusion / ScaLearn) -> evaluate",
        description="With no arguments: the bundled MiniLM, sources tweet-sentiment, bbc-topic, "
                    "rt-subjectivity (400 examples each, up to 2 epochs with early stopping) + the target's "
                    "own adapter, target rotten-tomatoes (200 training examples), method scalearn for 5 "
                    "epochs beside the target's own adapter as the baseline. --full uses every example.")


def _method_flag_fields() -> dict[str, tuple[type, str]]:
    """Flag destination -> (config class, config field) over every registered stage-2 method."""
    from plmkit.mtl.registry import transfer_methods

    flags: dict[str, tuple[type, str]] = {}
    for method in transfer_methods().values():
        for name, dest in method.cli_flags().items():
            flags.setdefault(dest, (method.config_class, name))
    return flags


def add_method_flags(parser: argparse.ArgumentParser) -> None:
    """Each registered method's own flags (``--fusion-value``, ``--scalearn-dropout``, ...), documented
    by its config's field docstrings; a flag another group already defines is not added twice."""
    from plmkit.cliargs import add_field_argument

    taken = {action.dest for action in parser._actions}
    group = parser.add_argument_group("method options")
    for dest, (cls, name) in _method_flag_fields().items():
        if dest not in taken:
            add_field_argument(group, cls, name, dest=dest)


def _method_options(args: argparse.Namespace) -> dict:
    values = vars(args)
    return {dest: values[dest] for dest in _method_flag_fields() if dest in values}


# ------------------------------------------------------------------------------ transferability
def cmd_transferability(args: argparse.Namespace) -> int:
    from plmkit.mtl.transferability import TransferabilitySetup, run_transferability

    setup = build_dataclass(TransferabilitySetup, args)
    setup.task_list()  # fail on a bad --tasks before any work
    return run_job(args, "transferability", "matrix", lambda trainer, run: run_transferability(setup, trainer, run),
                   _print_transferability, trainer_defaults={"learning_rate": setup.source_learning_rate})


def _print_transferability(metrics: dict, run_path: Path) -> None:
    tasks = metrics["tasks"]
    rows = [[name] + [f"{v:.3f}" for v in row] for name, row in zip(tasks, metrics["matrix"], strict=True)]
    print("\n" + format_table(rows, ["source \\ target", *tasks],
                               title=f"prompt transferability ({metrics['backbone']}, {metrics['probe_rows']} probe rows)"))
    print(f"\nrun folder: {run_path}  (metrics.json, transferability.png, run.log)")


def register_transferability(sub: argparse._SubParsersAction) -> None:
    from plmkit.mtl.transferability import TransferabilitySetup
    from plmkit.trainer import TrainerConfig

    add_job_parser(
        sub, "transferability", cmd_transferability,
        [Flags(TransferabilitySetup, "transferability"),
         Flags(TrainerConfig, "prompt training",
               exclude=("learning_rate", "seed", "metric", "greater_is_better", "epochs"),
               defaults={"output_dir": None, "batch_size": 32})],
        help="train or reuse a soft prompt per task; print the source x target transferability")
