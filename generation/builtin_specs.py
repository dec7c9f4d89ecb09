"""Built-in task specs (the same mappings a user writes as YAML): sentiment, topic and NLI pairs."""

from __future__ import annotations

from typing import Any

_REVIEW = 'The movie review in {sentiment} sentiment for movie "{{condition}}" is: "'

SENTIMENT: dict[str, Any] = {
    "name": "sentiment",
    "labels": ["negative", "positive"],
    "condition": {"prompt": 'Movie: "', "max_new_tokens": 10, "min_words": 1, "max_words": 8},
    "prompts": {label: _REVIEW.format(sentiment=label) for label in ("negative", "positive")},
    "zero_shot": 'The movie review in {label} sentiment is: "{text}"',
    "filters": {"min_words": 4, "max_words": 60},
}

_TOPICS = {"business": "business", "entertainment": "entertainment", "politics": "politics",
           "sport": "sport", "tech": "technology"}

TOPIC: dict[str, Any] = {
    "name": "topic",
    "labels": list(_TOPICS),  # the BBC News labels, in the built-in task's (sorted) order
    "prompts": {label: f'A news article about {word}. Its first sentence: "' for label, word in _TOPICS.items()},
    "zero_shot": 'A news article about {label}. Its first sentence: "{text}"',
    "label_words": {label: word for label, word in _TOPICS.items() if word != label},
    "filters": {"min_words": 5, "max_words": 80},
}

_RELATION = {"entailment": "means the same as sentence 1", "neutral": "might be true given sentence 1",
             "contradiction": "contradicts sentence 1"}

NLI: dict[str, Any] = {
    "name": "nli",
    "labels": ["entailment", "neutral", "contradiction"],  # the MNLI label ids
    "pair": True,
    "condition": {"prompt": 'A sentence from a news story: "', "max_new_tokens": 24, "min_words": 4,
                  "max_words": 30},
    "prompts": {label: 'Sentence 1: "{condition}"\nSentence 2, which ' + relation + ': "'
                for label, relation in _RELATION.items()},
    "zero_shot": 'Sentence 1: "{condition}"\nSentence 2, which {label}: "{text}"',
    "label_words": _RELATION,
    "filters": {"min_words": 3, "max_words": 40},
}

BUILTIN_SPECS: dict[str, dict[str, Any]] = {"sentiment": SENTIMENT, "topic": TOPIC, "nli": NLI}
