"""Deterministic seeded splitting.

A seeded permutation orders the rows; with strata (class ids) every class is spread evenly over the
order (row ``k`` of a class of ``n`` gets key ``(k + u) / n`` with one random offset ``u`` per class),
so every prefix of the order is stratified. Held-out parts are taken from the front of that order.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from plmkit.tasks.base import HELD_OUT_FRACTION, SPLITS, TaskError


def split_order(n: int, strata: np.ndarray | None, seed: int) -> np.ndarray:
    """A seeded permutation; with strata (class ids) classes are interleaved so every prefix is stratified."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    if strata is None:
        return perm
    keys = np.empty(n)
    for value in np.unique(strata):
        members = perm[strata[perm] == value]
        keys[members] = (np.arange(len(members)) + rng.random()) / len(members)
    return perm[np.argsort(keys[perm], kind="stable")]


def carve(frame: pd.DataFrame, strata: np.ndarray | None, seed: int, sizes: list[int],
          source: str) -> list[pd.DataFrame]:
    """Hold out parts of the given sizes (first in seeded order); returns [rest, *held_out]."""
    if len(frame) - sum(sizes) < 1:
        raise TaskError(f"{source}: only {len(frame)} rows, too few to split into train/validation/test; "
                        "fix: provide more rows or separate train.*, validation.* and test.* files")
    order = split_order(len(frame), strata, seed)
    bounds = np.cumsum([0, *sizes])
    held = [frame.iloc[order[a:b]] for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    return [frame.iloc[order[bounds[-1]:]], *held]


def split_three(frame: pd.DataFrame, strata: np.ndarray | None, seed: int, source: str) -> tuple[dict, dict]:
    """Split one table 80/10/10 into train/validation/test with the seed (stratified when strata given)."""
    held = max(1, round(HELD_OUT_FRACTION * len(frame)))
    train, validation, test = carve(frame, strata, seed, [held, held], source)
    kind = "stratified " if strata is not None else ""
    how = f"{kind}80/10/10 split of {source} ({len(frame)} rows), seed {seed}"
    return {"train": train, "validation": validation, "test": test}, dict.fromkeys(SPLITS, how)


def complete_splits(frames: dict, names: dict[str, str], label: str | None, seed: int) -> tuple[dict, dict]:
    """Fill in missing splits: a split alone is cut 80/10/10; one missing split is carved (10%) from train."""
    def strata(frame: pd.DataFrame) -> np.ndarray | None:
        return None if label is None else frame[label].to_numpy()

    present = [s for s in SPLITS if s in frames]
    if len(present) == 1:
        return split_three(frames[present[0]], strata(frames[present[0]]), seed, names[present[0]])
    if "train" not in frames:
        raise TaskError(f"{', '.join(names.values())}: {present} splits but no training split; "
                        "fix: add a train.* file (or pass a single file to have it split 80/10/10)")
    how = {s: f"{names[s]} as given" for s in present}
    for missing in [s for s in SPLITS if s not in frames]:
        size = max(1, round(HELD_OUT_FRACTION * len(frames["train"])))
        train = frames["train"]
        frames["train"], frames[missing] = carve(train, strata(train), seed, [size], names["train"])
        how[missing] = f"{size} rows (10%) carved from {names['train']}, seed {seed}"
        how["train"] = f"{names['train']} minus the rows carved for {missing}"
    return frames, how
