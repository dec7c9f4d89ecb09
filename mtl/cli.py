"""``plmkit adapters ...`` (and later ``plmkit transfer``): parse, call the library, print."""

from __future__ import annotations

import argparse
from pathlib import Path

from plmkit.cliargs import EPILOG, add_common, add_dataclass_arguments, build_dataclass
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


def register_adapters(sub: argparse._SubParsersAction) -> None:
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
    metric = metrics["metric"]
    rows = [[r["method"], f"{r['test_mean']:.4f} ± {r['test_std']:.4f}", f"{r['validation_mean']:.4f}",
             r["transfer_parameters"], r["trainable_parameters"], f"{r['train_time_s']:.0f}",
             f"{r['peak_memory_mb']:.0f}"] for r in metrics["summary"]]
    seeds = len(metrics["summary"][0]["seeds"])
    title = (f"{metrics['target']} ({metric}; test mean ± std over {seeds} seed(s)); sources: "
             + ", ".join(metrics["sources"] or ["-"]))
    print("\n" + format_table(rows, ["method", f"test {metric}", "validation", "transfer params",
                                     "trainable", "train s", "peak MB"], title=title))
    plots = ", ".join(p for p in metrics["plots"].values() if p)
    print(f"\nrun folder: {run_path}  (metrics.json, config.json{', ' + plots if plots else ''}, run.log)")


def register_transfer(sub: argparse._SubParsersAction) -> None:
    from plmkit.mtl.pipeline import TransferSetup
    from plmkit.trainer import TrainerConfig

    parser = sub.add_parser(
        "transfer", epilog=EPILOG,
        help="stage 1 (train or reuse source adapters) -> stage 2 (fusion / ScaLearn) -> evaluate",
        description="With no arguments: the bundled MiniLM, sources tweet-sentiment, bbc-topic, "
                    "rt-subjectivity (+ the target's own adapter), target rotten-tomatoes, method scalearn.")
    add_common(parser)
    add_dataclass_arguments(parser, TransferSetup, title="transfer")
    add_method_flags(parser)
    add_dataclass_arguments(parser, TrainerConfig, title="stage-2 training",
                            exclude=("learning_rate", "seed", "metric", "greater_is_better"),
                            defaults={"output_dir": None, "epochs": 3, "batch_size": 32})
    parser.set_defaults(func=cmd_transfer, _parser=parser)


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
    import dataclasses
    import typing

    from plmkit.cliargs import _base_type, field_docs

    taken = {action.dest for action in parser._actions}
    group = parser.add_argument_group("method options")
    for dest, (cls, name) in _method_flag_fields().items():
        if dest in taken:
            continue
        default = next(f.default for f in dataclasses.fields(cls) if f.name == name)
        kind = _base_type(typing.get_type_hints(cls)[name])
        help_text = f"{field_docs(cls).get(name, '')} (default: {default})".strip().replace("%", "%%")
        flag = f"--{dest.replace('_', '-')}"
        if kind is bool:
            group.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction, default=default, help=help_text)
        else:
            spellings = [flag, f"--{dest}"] if "_" in dest else [flag]
            group.add_argument(*spellings, dest=dest, type=kind, default=default, help=help_text,
                               metavar=kind.__name__.upper())


def _method_options(args: argparse.Namespace) -> dict:
    values = vars(args)
    return {dest: values[dest] for dest in _method_flag_fields() if dest in values}
