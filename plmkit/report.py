"""What a run shows people: aligned summary tables, JSON results and plots."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any


def _cell(value: Any) -> str:
    if isinstance(value, float):
        if math.isnan(value):
            return "-"
        return f"{value:,.4f}" if abs(value) < 1000 else f"{value:,.0f}"
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return str(value)


def format_table(rows: Sequence[Sequence[Any]], headers: Sequence[str], title: str | None = None) -> str:
    """A plain-text table: left-aligned text, right-aligned numbers."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max([len(h)] + [len(r[i]) for r in cells]) for i, h in enumerate(headers)]
    numeric = [all(isinstance(row[i], (int, float)) for row in rows) and rows for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric, strict=True)]
        return "  ".join(parts).rstrip()

    out = [title] if title else []
    out += [line(headers), "  ".join("-" * w for w in widths)]
    out += [line(r) for r in cells]
    return "\n".join(out)


def read_jsonl(path: str | Path) -> list[dict[str, Any]]:
    path = Path(path)
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def plot_training_curves(train_log: str | Path, out_path: str | Path, metric: str | None = None) -> Path | None:
    """Training loss and the validation metric against optimiser steps, as a PNG."""
    records = read_jsonl(train_log)
    losses = [(r["step"], r["loss"]) for r in records if "loss" in r]
    evals = [r["eval"] for r in records if "eval" in r]
    if not losses and not evals:
        return None
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    if losses:
        ax.plot(*zip(*losses, strict=True), color="tab:blue", label="train loss")
    ax.set_xlabel("optimiser step")
    ax.set_ylabel("train loss", color="tab:blue")
    key = metric or next((k for k in (evals[0] if evals else {}) if k not in ("step", "epoch")), None)
    if evals and key:
        twin = ax.twinx()
        twin.plot([e["step"] for e in evals], [e[key] for e in evals], "o-", color="tab:orange")
        twin.set_ylabel(f"validation {key}", color="tab:orange")
    fig.tight_layout()
    fig.savefig(out_path, bbox_inches="tight")
    plt.close(fig)
    return Path(out_path)


def plot_heatmap(matrix: Any, row_labels: Sequence[str], col_labels: Sequence[str], out_path: str | Path,
                 title: str = "", colorbar_label: str = "") -> Path:
    """A labelled heat map with the value written in each cell (e.g. per-layer weight of each source)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    values = np.asarray(matrix, dtype=float)
    fig, ax = plt.subplots(figsize=(2.5 + 1.1 * len(col_labels), 1.6 + 0.45 * len(row_labels)), dpi=120)
    image = ax.imshow(values, cmap="viridis", aspect="auto")
    ax.set_xticks(range(len(col_labels)), labels=col_labels, rotation=30, ha="right")
    ax.set_yticks(range(len(row_labels)), labels=row_labels)
    middle = (values.max() + values.min()) / 2
    for (i, j), value in np.ndenumerate(values):
        ax.text(j, i, f"{value:.3g}", ha="center", va="center", fontsize=7,
                color="black" if value > middle else "white")
    fig.colorbar(image, ax=ax, label=colorbar_label)
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    fig.savefig(out_path, bbox_inches="tight")
    plt.close(fig)
    return Path(out_path)


def plot_labelled_lines(series: dict[str, Sequence[tuple[float, float, str]]], out_path: str | Path,
                        xlabel: str = "", ylabel: str = "", title: str = "") -> Path:
    """One line with markers per series (x, y, point label), each point annotated with its label.

    E.g. accuracy against latency, one series per model family and one labelled point per step count.
    Points are joined in order of x.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
    for name, points in series.items():
        ordered = sorted(points, key=lambda point: point[0])
        xs, ys = [p[0] for p in ordered], [p[1] for p in ordered]
        ax.plot(xs, ys, "o-", label=name)
        for x, y, label in ordered:
            ax.annotate(label, (x, y), textcoords="offset points", xytext=(4, 4), fontsize=7)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out_path, bbox_inches="tight")
    plt.close(fig)
    return Path(out_path)
