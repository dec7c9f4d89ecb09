"""Turning raw generations into clean examples, counting what each rule dropped.

Per sample, in order:

1. **cut**: the prompt opens a quote, so the example ends at the first closing quote ``"`` or
   line break, whichever comes first (leading whitespace aside); with neither, after the last
   sentence end (``.``, ``!``, ``?``); with none of these the text is kept whole (when
   ``keep_unfinished``) or dropped as ``unfinished``. Nothing after the first quote or line break
   can reach an example, so generation stops each sample there (:func:`stop_strings`);
2. ``empty``: nothing left after cutting;
3. ``too_short`` / ``too_long``: fewer than ``min_words`` or more than ``max_words`` words;
4. ``same_as_condition``: the text equals its condition (X == C, compared normalised);
5. ``duplicate``: the same text (after cutting) was already kept;
6. ``near_duplicate``: the same normalised text (lower case, letters and digits only, single
   spaces) was already kept - differences in case, punctuation or spacing only.

Duplicates are judged across labels: the first occurrence is kept.

Optionally, after these text rules, one model-based rule (:func:`drop_disagreeing`):

7. ``label_mismatch``: a classifier (``plmkit generate --consistency``: the generator's own zero-shot
   prompting, ``generation.zeroshot.label_agreement``) does not pick the label the sample was
   generated for. A 135 M generator often writes text that does not follow its label; these samples
   are label noise for the task model.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from plmkit.errors import ConfigError

DROP_REASONS = ("unfinished", "empty", "too_short", "too_long", "same_as_condition", "duplicate",
                "near_duplicate")
_SENTENCE_END = re.compile(r"[.!?]")
_NOT_WORD = re.compile(r"[^0-9a-z]+")


@dataclass
class FilterConfig:
    """Which generated samples become examples."""

    min_words: int = 3
    """Drop examples with fewer words."""
    max_words: int = 200
    """Drop examples with more words."""
    cut_at_quote: bool = True
    """End an example at the first closing quote (the prompt opened one)."""
    keep_unfinished: bool = True
    """Keep a sample with no quote, newline or sentence end (else drop it as 'unfinished')."""
    drop_same_as_condition: bool = True
    """Drop an example equal to its condition (X == C)."""
    dedupe: bool = True
    """Drop exact duplicates."""
    near_dedupe: bool = True
    """Drop texts equal to a kept one up to case, punctuation and spacing."""

    def __post_init__(self) -> None:
        if self.min_words < 0 or self.max_words < max(1, self.min_words):
            raise ConfigError(f"filters need 0 <= min_words <= max_words and max_words >= 1, "
                              f"got min_words={self.min_words}, max_words={self.max_words}")


def stop_strings(cut_at_quote: bool = True) -> list[str]:
    """The strings :func:`cut` ends an example at: generating past the first one is wasted."""
    return ['"', "\n"] if cut_at_quote else ["\n"]


def cut(text: str, cut_at_quote: bool = True) -> tuple[str, bool]:
    """(the example, whether a stop was found): first closing quote or line break, else last sentence end."""
    text = text.lstrip()
    stops = [text.index(s) for s in stop_strings(cut_at_quote) if s in text]
    if stops:
        return text[:min(stops)].strip(), True
    ends = list(_SENTENCE_END.finditer(text))
    if ends:
        return text[:ends[-1].end()].strip(), True
    return text.strip(), False


def normalise(text: str) -> str:
    """Lower case, letters and digits only, single spaces (the near-duplicate key)."""
    return _NOT_WORD.sub(" ", text.lower()).strip()


def filter_samples(samples: Iterable[dict[str, Any]], config: FilterConfig) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Clean ``samples`` (dicts with ``raw`` and optional ``condition``); (kept, counts per reason).

    Each kept sample is the input dict with ``text`` added. ``counts`` has every reason in
    :data:`DROP_REASONS` plus ``generated`` and ``kept``.
    """
    counts: Counter[str] = Counter({reason: 0 for reason in DROP_REASONS})
    seen_exact: set[str] = set()
    seen_near: set[str] = set()
    kept = []
    for sample in samples:
        counts["generated"] += 1
        reason, text = _judge(sample, config, seen_exact, seen_near)
        if reason:
            counts[reason] += 1
            continue
        seen_exact.add(text)
        seen_near.add(normalise(text))
        kept.append({**sample, "text": text})
    counts["kept"] = len(kept)
    return kept, dict(counts)


def drop_disagreeing(kept: list[dict[str, Any]], counts: dict[str, int], agree: Sequence[bool]
                     ) -> tuple[list[dict[str, Any]], dict[str, int]]:
    """Rule 7: keep the samples whose ``agree`` flag is true; the rest count as ``label_mismatch``."""
    if len(agree) != len(kept):
        raise ValueError(f"one agreement flag per kept sample is needed: {len(agree)} flags, {len(kept)} samples")
    confirmed = [sample for sample, ok in zip(kept, agree, strict=True) if ok]
    return confirmed, {**counts, "label_mismatch": len(kept) - len(confirmed), "kept": len(confirmed)}


def _judge(sample: dict[str, Any], config: FilterConfig, seen_exact: set[str], seen_near: set[str]) -> tuple[str | None, str]:
    """(the reason to drop it or None, its cut text)."""
    text, finished = cut(sample["raw"], config.cut_at_quote)
    words = len(text.split())
    if not finished and not config.keep_unfinished:
        return "unfinished", text
    if not text:
        return "empty", text
    if words < config.min_words:
        return "too_short", text
    if words > config.max_words:
        return "too_long", text
    condition = sample.get("condition")
    if config.drop_same_as_condition and condition and normalise(condition) == normalise(text):
        return "same_as_condition", text
    if config.dedupe and text in seen_exact:
        return "duplicate", text
    if config.near_dedupe and normalise(text) in seen_near:
        return "near_duplicate", text
    return None, text
