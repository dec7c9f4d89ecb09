"""ZeroGen: synthesise a labelled data set with a causal LM and train a tiny task model on it.

``spec`` (task specs), ``zerogen`` (streamed, resumable, sharded generation), ``filters``,
``dataset`` (the synthetic data set on disk), ``zeroshot`` (the generator's own zero-shot baseline),
``task_models`` (BiLSTM, small transformer), ``losses`` (noise-robust losses, from the core),
``jobs`` and ``cli`` (``plmkit generate``).
"""

from plmkit.generation.filters import FilterConfig, cut, filter_samples, normalise, stop_strings
from plmkit.generation.spec import ConditionSpec, SpecError, TaskSpec, load_spec
from plmkit.generation.task_models import BiLSTMClassifier, TaskModelConfig, build_task_model
from plmkit.generation.zerogen import GenerationConfig, ResumeMismatchError, iter_raw, synthesise

__all__ = ["BiLSTMClassifier", "ConditionSpec", "FilterConfig", "GenerationConfig", "ResumeMismatchError",
           "SpecError", "TaskModelConfig", "TaskSpec", "build_task_model", "cut", "filter_samples", "iter_raw",
           "load_spec", "normalise", "stop_strings", "synthesise"]
