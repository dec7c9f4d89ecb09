"""The optimiser's parameter groups and the learning-rate schedule of the one trainer.

Groups. Every trainable parameter lands in one AdamW group keyed by (learning-rate factor, decay off):

    factor(name)  = the FACTOR of the first ``PATTERN=FACTOR`` rule whose glob matches ``name``, else 1
    decay off     = 1-D tensors, biases, norms and gains (multiplicative, centred on 1: decay toward 0
                    would switch them off)
    group lr      = factor x the base rate; the schedule scales every group alike

Groups at the plain rate come first, so group 0's rate (the one the trainer logs) is the schedule's own.
With no rules the groups are the usual two (decay on, decay off). ``layout`` records each group's
(factor, weight decay, element count): what a checkpoint's optimiser state must match to load.

Schedule. ``linear_schedule``: linear warm-up to the peak rate over ``warmup_steps``, then linear decay
to zero at ``total_steps``.
"""

from __future__ import annotations

import fnmatch
import math
from collections.abc import Callable, Iterable

from torch import nn

from plmkit.errors import TrainerConfigError


def parse_lr_multipliers(text: str, flag: str = "--lr-multipliers") -> list[tuple[str, float]]:
    """``'*corr*=10, head.*=2'`` -> ``[('*corr*', 10.0), ('head.*', 2.0)]``; one error line naming ``flag``
    for a bad entry."""
    rules = []
    for entry in filter(None, (part.strip() for part in text.split(","))):
        pattern, sep, value = (part.strip() for part in entry.rpartition("="))
        try:
            factor = float(value)
        except ValueError:
            factor = math.nan
        if not sep or not pattern or not math.isfinite(factor) or factor <= 0:
            raise TrainerConfigError(
                f"{flag} entry {entry!r} is not PATTERN=FACTOR with a glob pattern and a finite factor > 0 "
                "(e.g. '*time_corrections*=10')")
        rules.append((pattern, factor))
    return rules


def no_decay(name: str, param: nn.Parameter) -> bool:
    """Biases, norms and gains (multiplicative, centred on 1: decay toward 0 would switch them off)."""
    lowered = name.lower()
    return param.ndim <= 1 or lowered.endswith("bias") or "norm" in lowered or "gain" in lowered


def param_groups(named: Iterable[tuple[str, nn.Parameter]], learning_rate: float, weight_decay: float,
                 lr_multipliers: str = "") -> tuple[list[dict], list[dict]]:
    """The AdamW groups for the trainable ``(name, parameter)`` pairs, and their recorded layout.

    A rule whose pattern matches no parameter is refused, with example names (globs match whole names).
    """
    named = list(named)
    rules = parse_lr_multipliers(lr_multipliers)
    unmatched = [pattern for pattern, _ in rules if not any(fnmatch.fnmatchcase(n, pattern) for n, _ in named)]
    if unmatched:
        shown = ", ".join(n for n, _ in named[:6]) + (", ..." if len(named) > 6 else "")
        raise TrainerConfigError(
            f"--lr-multipliers pattern(s) {', '.join(map(repr, unmatched))} match no trainable parameter; "
            f"the names look like: {shown} (globs match whole names: use '*part*')")
    grouped: dict[tuple[float, bool], list[nn.Parameter]] = {}
    for name, param in named:
        factor = next((f for pattern, f in rules if fnmatch.fnmatchcase(name, pattern)), 1.0)
        grouped.setdefault((factor, no_decay(name, param)), []).append(param)
    order = sorted(grouped, key=lambda key: (key[0] != 1.0, key[0], key[1]))
    groups = [{"params": grouped[key], "lr": learning_rate * key[0],
               "weight_decay": 0.0 if key[1] else weight_decay} for key in order]
    layout = [{"lr_factor": key[0], "weight_decay": group["weight_decay"],
               "numel": sum(p.numel() for p in group["params"])} for key, group in zip(order, groups, strict=True)]
    return groups, layout


def linear_schedule(total_steps: int, warmup_steps: int) -> Callable[[int], float]:
    """Linear warm-up to the peak learning rate, then linear decay to zero at ``total_steps``."""

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / max(1, warmup_steps)
        return max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))

    return factor
