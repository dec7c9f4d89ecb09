"""Text tasks and corpora: built-in offline corpora, user files, in-memory frames and hub data sets.

Labelled tasks come out one way (three ``datasets.Dataset`` splits, text fields, integer or float
labels, a primary metric) and carry ``split_info`` recording how their splits were made, so a run
folder is enough to reproduce the exact data a model saw. Unlabelled sentence corpora and scored
sentence pairs (STS) are read as given, without splitting. Rows in error messages count from 1,
header excluded.

Modules: ``base`` (Task, TaskError), ``builtins`` (bundled corpora), ``files`` (reading files and hub
data sets), ``labels`` (columns, texts, labels), ``splits`` (seeded splitting), ``build`` (assembling
a Task), ``corpus`` (sentence corpora and scored pairs).
"""

from __future__ import annotations

from pathlib import Path

from plmkit.tasks.base import HELD_OUT_FRACTION, SPLITS, SUPPORTED_EXTENSIONS, Task, TaskError
from plmkit.tasks.build import load_task, task_from_frames
from plmkit.tasks.builtins import builtin_task_names
from plmkit.tasks.corpus import ScoredPairs, SentenceCorpus, load_scored_pairs, load_sentences

__all__ = [
    "HELD_OUT_FRACTION", "SPLITS", "SUPPORTED_EXTENSIONS", "ScoredPairs", "SentenceCorpus", "Task",
    "TaskError", "builtin_task_names", "load_scored_pairs", "load_sentences", "load_task",
    "task_from_frames",
]


def _fetch_asset(name: str) -> Path:
    """The folder of an asset; the asset package loads only when a built-in task is used.

    Callers look this name up on ``plmkit.tasks`` at call time, so tests can replace it there.
    """
    from plmkit.assets import fetch

    return Path(fetch(name))
