"""Task specs: what to ask the generator for, per label, and how to read its answers.

A spec is a small mapping (YAML or JSON file, or one of the built-ins ``sentiment``, ``topic``,
``nli``)::

    name: sentiment
    labels: [negative, positive]
    condition: {prompt: 'Movie: "', max_words: 8}      # optional: generate conditions C first
    prompts:                                          # one template per label
      negative: 'The movie review in negative sentiment for movie "{condition}" is: "'
      positive: 'The movie review in positive sentiment for movie "{condition}" is: "'
    zero_shot: 'The movie review in {label} sentiment is: "{text}"'   # optional, for the baseline
    pair: false                                       # true: (condition, text) is a sentence pair
    counter_labels: {negative: [positive]}            # optional, for self-debiasing (default: all others)
    filters: {min_words: 4}                           # see generation.filters.FilterConfig

With a ``condition`` every label prompt must hold ``{condition}``; the zero-shot template must hold
``{label}`` and ``{text}`` (and ``{condition}`` for pair tasks). Anything else is a ``SpecError``
that names the field and the fix.
"""

from __future__ import annotations

import json
import string
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from plmkit.errors import ConfigError
from plmkit.generation.filters import FilterConfig


class SpecError(ConfigError):
    """A task spec that cannot work; the message names the field and the fix."""


def _placeholders(template: str) -> set[str]:
    try:
        return {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as error:
        raise SpecError(f"template {template!r} is not a valid format string ({error}); "
                        "write literal braces as '{{' and '}}'") from error


@dataclass
class ConditionSpec:
    """How conditions (e.g. movie names, premises) are generated before the labelled texts."""

    prompt: str
    """Prompt the generator completes with one condition (e.g. 'Movie: "')."""
    max_new_tokens: int = 12
    """Tokens per condition at most."""
    min_words: int = 1
    """Shorter conditions are dropped."""
    max_words: int = 12
    """Longer conditions are dropped."""

    def __post_init__(self) -> None:
        if not isinstance(self.prompt, str) or not self.prompt.strip():
            raise SpecError("condition.prompt must be a non-blank string such as 'Movie: \"'")
        if self.max_new_tokens < 1 or self.min_words < 1 or self.max_words < self.min_words:
            raise SpecError("condition needs max_new_tokens >= 1 and 1 <= min_words <= max_words")


@dataclass
class TaskSpec:
    """A task to synthesise: label names, one prompt per label, optional conditions and filters."""

    name: str
    labels: list[str]
    """Class names, in label-id order (a real evaluation task must use the same names)."""
    prompts: dict[str, str]
    """Label name -> prompt template the generator continues with one example of that label."""
    condition: ConditionSpec | None = None
    """Generate conditions first and put each into every label's prompt as ``{condition}``."""
    zero_shot: str | None = None
    """Template scoring a text under a label for the zero-shot baseline (``{label}``, ``{text}``)."""
    label_words: dict[str, str] = field(default_factory=dict)
    """How a label is written inside the zero-shot template (default: its name)."""
    pair: bool = False
    """A sentence-pair task: the condition is the first text (premise), the output the second."""
    chat_template: bool = False
    """Wrap prompts in the generator's chat template (instruction-tuned models)."""
    counter_labels: dict[str, list[str]] = field(default_factory=dict)
    """Self-debiasing (``--self-debias``): label -> the labels whose prompts its samples should not
    fit better than its own; a label not listed counters every other label."""
    filters: FilterConfig = field(default_factory=FilterConfig)

    def __post_init__(self) -> None:
        if not self.labels or len(set(self.labels)) != len(self.labels) or len(self.labels) < 2:
            raise SpecError(f"spec {self.name!r}: labels must be >= 2 distinct names, got {self.labels}")
        unknown = sorted(set(self.prompts) - set(self.labels))
        if unknown:
            raise SpecError(f"spec {self.name!r}: prompts given for unknown label(s) {unknown}; "
                            f"labels are {self.labels} (fix the label name or add it to 'labels')")
        missing = [label for label in self.labels if label not in self.prompts]
        if missing:
            raise SpecError(f"spec {self.name!r}: no prompt for label(s) {missing}; add one under 'prompts'")
        unknown_words = sorted(set(self.label_words) - set(self.labels))
        if unknown_words:
            raise SpecError(f"spec {self.name!r}: label_words names unknown label(s) {unknown_words}")
        for label, counters in self.counter_labels.items():
            if label not in self.labels or not isinstance(counters, list) \
                    or not all(isinstance(c, str) for c in counters) or not set(counters) <= set(self.labels) - {label}:
                raise SpecError(f"spec {self.name!r}: counter_labels[{label!r}] = {counters!r} must map a label to "
                                f"a list of other labels (labels: {self.labels}); [] turns debiasing off for it")
        if self.pair and self.condition is None:
            raise SpecError(f"spec {self.name!r}: a pair task needs a 'condition' (the first sentence)")
        self._check_templates()

    def _check_templates(self) -> None:
        allowed = {"condition"} if self.condition else set()
        for label, template in self.prompts.items():
            names = _placeholders(template)
            if self.condition and "condition" not in names:
                raise SpecError(f"spec {self.name!r}: the prompt for label {label!r} has no {{condition}} "
                                "placeholder, so every condition would give the same prompt; add {condition}")
            if names - allowed:
                raise SpecError(f"spec {self.name!r}: the prompt for label {label!r} uses unknown "
                                f"placeholder(s) {sorted(names - allowed)}; allowed: {sorted(allowed) or 'none'}")
        if self.zero_shot is not None:
            names = _placeholders(self.zero_shot)
            needed = {"label", "text"} | ({"condition"} if self.pair else set())
            if not needed <= names:
                raise SpecError(f"spec {self.name!r}: the zero_shot template lacks placeholder(s) "
                                f"{sorted(needed - names)}; it must hold {sorted(needed)}")

    def prompt(self, label: str, condition: str | None) -> str:
        return self.prompts[label].format(condition=condition or "")

    def counters(self, label: str) -> list[str]:
        """The labels whose prompts ``label``'s samples are debiased against (self-debiasing)."""
        if label in self.counter_labels:
            return list(self.counter_labels[label])
        return [other for other in self.labels if other != label]

    def label_word(self, label: str) -> str:
        return self.label_words.get(label, label)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> TaskSpec:
        if not isinstance(data, dict):
            raise SpecError(f"a task spec must be a mapping, got {type(data).__name__}")
        known = set(cls.__dataclass_fields__)
        extra = sorted(set(data) - known)
        if extra:
            raise SpecError(f"task spec: unknown field(s) {extra}; known fields: {sorted(known)}")
        for required in ("name", "labels", "prompts"):
            if required not in data:
                raise SpecError(f"task spec: missing field {required!r}")
        values = dict(data)
        if isinstance(values.get("condition"), dict):
            values["condition"] = ConditionSpec(**values["condition"])
        values["filters"] = _filters(values.get("filters"))
        return cls(**values)


def _filters(value: Any) -> FilterConfig:
    if value is None:
        return FilterConfig()
    if isinstance(value, FilterConfig):
        return value
    if not isinstance(value, dict):
        raise SpecError(f"task spec: 'filters' must be a mapping, got {type(value).__name__}")
    known = set(FilterConfig.__dataclass_fields__)
    if set(value) - known:
        raise SpecError(f"task spec: unknown filter(s) {sorted(set(value) - known)}; known: {sorted(known)}")
    return FilterConfig(**value)


def load_spec(spec: str | dict[str, Any] | TaskSpec) -> TaskSpec:
    """A built-in spec by name, a YAML/JSON file, a mapping, or a TaskSpec as it is."""
    from plmkit.generation.builtin_specs import BUILTIN_SPECS

    if isinstance(spec, TaskSpec):
        return spec
    if isinstance(spec, dict):
        return TaskSpec.from_dict(spec)
    if spec in BUILTIN_SPECS:
        return TaskSpec.from_dict(BUILTIN_SPECS[spec])
    path = Path(spec).expanduser()
    if not path.is_file():
        raise SpecError(f"--spec {spec!r} is neither a built-in spec ({', '.join(sorted(BUILTIN_SPECS))}) "
                        "nor an existing YAML/JSON file")
    text = path.read_text(encoding="utf-8")
    try:
        if path.suffix.lower() in (".yaml", ".yml"):
            import yaml

            data = yaml.safe_load(text)
        else:
            data = json.loads(text)
    except Exception as error:  # yaml.YAMLError or json.JSONDecodeError: the file is not parseable
        raise SpecError(f"{path}: could not parse the spec ({type(error).__name__}: {error})") from error
    return TaskSpec.from_dict(data)
