"""Command-line flags generated from config dataclasses, so ``--help`` shows each field's docstring.

A field ``learning_rate: float = 3e-4`` with a docstring below it becomes ``--learning-rate`` (also
accepted as ``--learning_rate``). ``--config run.yaml`` (or .json) supplies values that flags override.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import json
import textwrap
import types
import typing
from dataclasses import MISSING
from pathlib import Path
from typing import Any


def field_docs(cls: type) -> dict[str, str]:
    """Docstrings written under dataclass fields (read from the source, as documentation tools do)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError):
            continue
        body = tree.body[0].body
        for node, following in zip(body, body[1:], strict=False):
            documented = isinstance(following, ast.Expr) and isinstance(following.value, ast.Constant)
            if documented and isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
                docs[node.target.id] = " ".join(str(following.value.value).split())
    return docs


def _base_type(annotation: Any) -> Any:
    """``int | None`` -> int; ``str`` -> str."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(annotation) if a is not type(None)]
        return args[0] if len(args) == 1 else str
    return annotation


def add_field_argument(group: Any, cls: type, name: str, dest: str | None = None, default: Any = MISSING,
                       extra_flags: tuple[str, ...] = ()) -> None:
    """One flag for field ``name`` of dataclass ``cls``: ``--<dest>`` typed from the annotation, its help
    from the field's docstring; ``dest`` renames it (e.g. a method's field ``dropout`` as
    ``scalearn_dropout``) and ``default`` overrides the field's own default."""
    field = next(f for f in dataclasses.fields(cls) if f.name == name)
    dest = dest or name
    default = field.default if default is MISSING else default
    kind = _base_type(typing.get_type_hints(cls)[name])
    flags = [f"--{dest.replace('_', '-')}"]
    if "_" in dest and kind is not bool:
        flags.append(f"--{dest}")  # the spelling transformers' flags use
    flags.extend(extra_flags)
    # argparse %-formats help strings: a literal "50 %" in a docstring must not break --help
    help_text = f"{field_docs(cls).get(name, '')} (default: {default})".strip().replace("%", "%%")
    if kind is bool:
        group.add_argument(*flags, dest=dest, action=argparse.BooleanOptionalAction, default=default, help=help_text)
    else:
        group.add_argument(*flags, dest=dest, type=kind, default=default, help=help_text,
                           metavar=kind.__name__.upper() if hasattr(kind, "__name__") else None)


def add_dataclass_arguments(parser: argparse.ArgumentParser, cls: type, exclude: tuple[str, ...] = (),
                            defaults: dict[str, Any] | None = None, title: str | None = None,
                            aliases: dict[str, tuple[str, ...]] | None = None) -> None:
    """One flag per field of ``cls``; ``aliases`` maps a field to extra flag spellings (kept old names)."""
    group = parser.add_argument_group(title or cls.__name__)
    aliases, defaults = aliases or {}, defaults or {}
    for field in dataclasses.fields(cls):
        default = defaults.get(field.name, field.default)
        if field.name in exclude or default is MISSING:
            continue
        add_field_argument(group, cls, field.name, default=default, extra_flags=aliases.get(field.name, ()))


def build_dataclass(cls: type, namespace: argparse.Namespace, **overrides: Any) -> Any:
    names = {f.name for f in dataclasses.fields(cls)}
    values = {k: v for k, v in vars(namespace).items() if k in names}
    values.update(overrides)
    return cls(**values)


def read_config_file(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise SystemExit(f"error: config file {path} does not exist")
    text = path.read_text()
    if path.suffix in (".yaml", ".yml"):
        import yaml

        values = yaml.safe_load(text) or {}
    else:
        values = json.loads(text)
    if not isinstance(values, dict):
        raise SystemExit(f"error: {path} must hold a mapping of option names to values")
    return {k.replace("-", "_"): v for k, v in values.items()}


def parse_with_config(parser: argparse.ArgumentParser, argv: list[str] | None) -> argparse.Namespace:
    """Parse twice: first to find ``--config``, then with its values as the subcommand's defaults.

    The subcommand's parser is found through the ``_parser`` default it sets on itself.
    """
    first, _ = parser.parse_known_args(argv)
    config_path = getattr(first, "config", None)
    if config_path:
        target = getattr(first, "_parser", parser)
        values = read_config_file(config_path)
        unknown = sorted(set(values) - {action.dest for action in target._actions})
        if unknown:
            raise SystemExit(f"error: {config_path} sets unknown options: {', '.join(unknown)}")
        target.set_defaults(**values)
    return parser.parse_args(argv)


EPILOG = "Run folders hold config.json, metrics.json, weights, plots and run.log."


def add_common(parser: argparse.ArgumentParser) -> None:
    """Options every job has: ``--config``, ``--overwrite`` and the launcher's ``--local_rank``."""
    parser.add_argument("--config", help="YAML or JSON file of option values; flags override it")
    parser.add_argument("--overwrite", action="store_true",
                        help="empty a non-empty --output-dir and start a new run in it (default: refuse)")
    parser.add_argument("--local_rank", "--local-rank", type=int, default=None, help=argparse.SUPPRESS)


@dataclasses.dataclass(frozen=True)
class Flags:
    """One config dataclass's flags in a job's ``--help``: a titled group (see :func:`add_dataclass_arguments`)."""

    cls: type
    title: str
    exclude: tuple[str, ...] = ()
    defaults: dict[str, Any] | None = None
    aliases: dict[str, tuple[str, ...]] | None = None


def add_job_parser(sub: argparse._SubParsersAction, name: str, func: Any, sections: list[Any],
                   **parser_options: Any) -> argparse.ArgumentParser:
    """A job's subcommand ``name`` running ``func(args)``: the common options (:func:`add_common`), then
    each section in order -- a :class:`Flags`, or a callable that adds its own flags to the parser.

    ``parser_options`` go to ``add_parser`` (``help``, ``description``; ``epilog`` defaults to :data:`EPILOG`).
    """
    parser = sub.add_parser(name, **{"epilog": EPILOG, **parser_options})
    add_common(parser)
    for section in sections:
        if isinstance(section, Flags):
            add_dataclass_arguments(parser, section.cls, exclude=section.exclude, defaults=section.defaults,
                                    title=section.title, aliases=section.aliases)
        else:
            section(parser)
    parser.set_defaults(func=func, _parser=parser)
    return parser


def quiet_libraries() -> None:
    """Keep library chatter (weight-loading bars, info logs) out of our progress output."""
    import os

    import torch

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    from transformers.utils import logging as hf_logging

    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
