"""The main job, ``plmkit transfer``: stage 1 (train or reuse source adapters) → stage 2 → evaluation.

resolve backbone → resolve tasks → stage 1: for each source (and the target itself, as the papers
do) reuse its adapter from the store if backbone, task and adapter config match, else train and store
it → stage 2: attach the transfer method over the frozen sources plus a new head, train on the target
→ evaluate on the target's test split → report (table, JSON, heat map of per-layer source weights).
"""

from __future__ import annotations

import contextlib
import copy
import json
import logging
import statistics
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from plmkit import distributed
from plmkit.backbones import DEFAULT_ENCODER, Backbone, load_encoder
from plmkit.errors import ConfigError
from plmkit.jobs import DataArgs
from plmkit.memory import peak_memory_mb, reset_peak_memory
from plmkit.models import build_classifier
from plmkit.mtl.adapters import KIND, AdapterConfig
from plmkit.mtl.fingerprint import backbone_fingerprint
from plmkit.mtl.registry import source_kind, transfer_method, transfer_methods
from plmkit.mtl.stage1 import WEAK_MARGIN, source_quality, train_source
from plmkit.mtl.store import AdapterStore, store_key
from plmkit.mtl.transfer import Composition, SourceRef, attach_transfer
from plmkit.report import plot_heatmap
from plmkit.runs import RunFolder, environment
from plmkit.tasks import Task, load_task
from plmkit.textclf import TaskData, train_classifier
from plmkit.trainer import TrainerConfig, seed_everything

logger = logging.getLogger("plmkit")


@dataclass
class TransferSetup(DataArgs):
    """What to transfer from and to; training flags (epochs, batch size, ...) apply to stage 2.

    The data fields come from ``plmkit.jobs.DataArgs``; the sample limits and ``--text-fields`` /
    ``--label-field`` / ``--task-type`` describe the target (sources are detected); the ``source_*``
    limits apply to each source."""

    sources: str = "tweet-sentiment,bbc-topic,rt-subjectivity"
    """Comma-separated source tasks (built-in names, data files/folders, or hub ids)."""
    target: str = "rotten-tomatoes"
    """The target task."""
    method: str = "scalearn"
    """A registered method: adapter, full, fusion, scalearn, scalearn-uniform, scalearn++, scalearn-uniform++."""
    compare: str | None = None
    """Comma-separated methods to run on the same split and seeds ('all' for every method)."""
    seeds: str = "42"
    """Comma-separated stage-2 seeds; the table reports mean ± std over them."""
    include_target_adapter: bool = True
    """Add the target's own stage-1 adapter as the last source, as the papers do."""
    backbone: str = DEFAULT_ENCODER
    """A bundled asset name, a local model folder, or a hub id."""
    store: str | None = None
    """Adapter store folder (default: $PLMKIT_ADAPTER_STORE or <plmkit cache>/adapter-store)."""
    learning_rate: float | None = None
    """Stage-2 learning rate; None picks the method's default (ScaLearn 6e-3, fusion 5e-5, ...)."""
    max_length: int = 48
    """Tokens per example (the bundled tasks' sentences and tweets mostly fit; news is cut to its lead)."""
    pooling: str | None = None
    """Head pooling: 'mean', 'cls' or 'last' (default: the model type's own)."""
    max_train_samples: int | None = 200
    """Target training examples (seeded subsample; 0 uses all): a low-resource target, where transfer helps most."""
    max_eval_samples: int | None = 300
    """Target validation/test examples (0 or None uses all)."""
    source_max_train_samples: int | None = 400
    """Training examples per source adapter (0 uses all)."""
    source_max_eval_samples: int | None = 200
    """Validation examples per source adapter (0 uses all)."""
    source_epochs: int = 2
    """Most epochs per source adapter; with the sample limit this is the per-source budget (the target's own
    adapter trains on the stage-2 schedule instead, like the baseline it stands beside)."""
    source_patience: int | None = 1
    """Stop a source after this many epochs without a better validation metric (best weights kept)."""
    source_learning_rate: float = 1e-3
    reduction_factor: int = 16
    """Bottleneck of the source adapters: hidden / reduction_factor."""
    full: bool = False
    """Use every example of every task (sources and target), ignoring the sample limits: the GPU setting."""
    baseline: bool = True
    """Also train the target's own adapter ('adapter') on the same split and seeds; report each gain over it."""
    weak_margin: float = WEAK_MARGIN
    """A source whose validation metric is within this of its constant (majority-class) baseline is weak."""
    method_options: dict[str, Any] = field(default_factory=dict)
    """Values of the methods' own flags by flag name (``fusion_value``, ``scalearn_dropout``, ...)."""

    def method_config(self, method: str) -> Any:
        """The config of ``method`` from its flags (unset flags keep the config's defaults)."""
        return transfer_method(method).make_config({"reduction_factor": self.reduction_factor,
                                                    **self.method_options})

    def composition(self, method: str, refs: list[SourceRef]) -> Composition:
        return Composition(method=method, sources=refs, config=self.method_config(method))

    def methods(self) -> list[str]:
        """The methods to run, the baseline adapter first when ``baseline`` adds it."""
        known = transfer_methods()
        names = list(known) if self.compare == "all" else (self.compare.split(",") if self.compare else [self.method])
        names = [n.strip() for n in names if n.strip()]
        unknown = [n for n in names if n not in known]
        if unknown:
            raise ConfigError(f"unknown method(s) {', '.join(unknown)}; choose from {', '.join(known)}")
        if self.baseline and BASELINE not in names:
            names.insert(0, BASELINE)
        return names

    def seed_list(self) -> list[int]:
        try:
            return [int(s) for s in self.seeds.split(",") if s.strip()]
        except ValueError as error:
            raise ConfigError(f"--seeds must be comma-separated integers, got {self.seeds!r}") from error

    def source_config(self, kind: str) -> Any:
        """The stage-1 config of ``kind``: the adapter's from --reduction-factor, others from the first
        method (of this run) that composes ``kind`` and whose config has ``source_config()``."""
        if kind == KIND:
            return AdapterConfig(reduction_factor=self.reduction_factor)
        for name in self.methods():
            config = self.method_config(name)
            if kind in transfer_method(name).source_kinds and hasattr(config, "source_config"):
                return config.source_config()
        return source_kind(kind).config_class()

    def limits(self, source: bool) -> tuple[int | None, int | None]:
        """(train, evaluation) sample limits of a source or of the target; (None, None) with ``full``."""
        if self.full:
            return None, None
        if source:
            return _limit(self.source_max_train_samples), _limit(self.source_max_eval_samples)
        return _limit(self.max_train_samples), _limit(self.max_eval_samples)

    def source_list(self) -> list[str]:
        """The source specs; 'auto' gives none here (the method ranks the store's entries itself)."""
        if self.sources.strip() == "auto":
            return []
        names = [s.strip() for s in self.sources.split(",") if s.strip()]
        if not names and not self.include_target_adapter:
            raise ConfigError("no source tasks: pass --sources A,B,C")
        return names


BASELINE = "adapter"
"""The method every gain is measured against: the target's own adapter, same split and seeds."""


def _display_name(task_spec: str) -> str:
    """A built-in name as it is; a file or folder by its stem (``data/sst2`` -> ``sst2``)."""
    return Path(task_spec).stem if ("/" in task_spec or "." in task_spec) else task_spec


def _limit(value: int | None) -> int | None:
    return value if value and value > 0 else None


# ------------------------------------------------------------------------------ stage 1
def source_settings(setup: TransferSetup, base: TrainerConfig, is_target: bool = False) -> dict[str, Any]:
    """The stage-1 settings that shape a source module (part of its store key).

    A source trains for at most ``source_epochs`` with early stopping (``source_patience``); the
    target's own module is trained like the baseline adapter it stands beside: the stage-2 epochs,
    no early stopping, the best validation epoch kept (it is as cheap as the target is small)."""
    epochs, patience = (base.epochs, None) if is_target else (setup.source_epochs, setup.source_patience)
    return {"max_length": setup.max_length, "pooling": setup.pooling, "epochs": epochs,
            "patience": patience, "learning_rate": setup.source_learning_rate,
            "batch_size": base.batch_size, "seed": 0}


def source_module(backbone: Backbone, task_spec: str, setup: TransferSetup, base: TrainerConfig,
                  store: AdapterStore, run: RunFolder, kind: str = KIND) -> SourceRef:
    """Reuse the stored ``kind`` module for ``task_spec`` or train it now (under the key's lock) and store it."""
    return prepare_source(backbone, task_spec, setup, base, store, run, kind)[0]


def prepare_source(backbone: Backbone, task_spec: str, setup: TransferSetup, base: TrainerConfig,
                   store: AdapterStore, run: RunFolder, kind: str = KIND, config: Any = None,
                   is_target: bool = False) -> tuple[SourceRef, dict[str, Any]]:
    """``source_module`` plus the source's quality: its validation metric vs its constant baseline.

    Stage 1 runs up to ``source_epochs`` epochs, evaluates after each, stops after
    ``source_patience`` epochs without improvement and keeps the best validation weights.
    ``is_target``: this is the target's own module, trained on exactly the target's split (its
    sample limits and fields), so that no method sees more target labels than the baseline adapter,
    and on the baseline's schedule (see :func:`source_settings`).
    """
    config = config if config is not None else setup.source_config(kind)
    if is_target:
        train_limit, eval_limit = setup.limits(source=False)
        task = setup.load(task_spec, max_train_samples=train_limit or 0, max_eval_samples=eval_limit or 0)
    else:
        train_limit, eval_limit = setup.limits(source=True)
        task = load_task(task_spec, seed=setup.data_seed, max_train_samples=train_limit,
                         max_eval_samples=eval_limit)
    settings = {**source_settings(setup, base, is_target), "config": asdict(config), "data": task.fingerprint(),
                "weights": backbone_fingerprint(backbone.model, store.root / ".fingerprints.json")}
    key = store_key(backbone.signature(), task_spec, settings, kind=kind)
    trainer = replace(base, epochs=settings["epochs"], max_steps=None, learning_rate=setup.source_learning_rate,
                      seed=settings["seed"], metric=None, early_stopping_patience=settings["patience"],
                      eval_every_steps=None, load_best_at_end=True, resume=False)
    folder = run.path / "stage1" / task.name

    def train() -> Path:
        logger.info("stage 1: training the %s %s (store key %s)", task_spec, kind, key)
        train_source(copy.deepcopy(backbone.model), backbone, task, kind, config, trainer, folder / kind,
                     max_length=setup.max_length, pooling=setup.pooling, train_folder=folder)
        return folder / kind

    path, reused = store.get_or_put(key, train)  # collective under several ranks: rank 0 decides for all
    if reused:
        logger.info("stage 1: reusing %s %s from %s", task_spec, kind, path)
    quality = source_quality(task, _stored_validation(path), setup.weak_margin)
    logger.info("stage 1: %s validation %s %.4f (constant baseline %.4f)%s", task_spec, quality["metric"],
                quality["validation"], quality["constant_baseline"],
                " -- WEAK: near its constant baseline" if quality["weak"] else "")
    name = _display_name(task_spec)
    return SourceRef(name, str(path), key, kind), {"name": name, **quality}


def _stored_validation(path: Path) -> dict[str, float]:
    """The validation scores a stored module was saved with."""
    return json.loads((Path(path) / "config.json").read_text())["validation"]


source_adapter = source_module  # the earlier name


# ------------------------------------------------------------------------------ stage 2
def _attach(method: str, model, refs: list[SourceRef], setup: TransferSetup, backbone: Backbone):
    spec = transfer_method(method)
    if spec.uses_sources:
        return attach_transfer(model, setup.composition(method, refs), backbone.name)
    return spec.attach(model, setup.method_config(method))


def run_method(method: str, seed: int, refs: list[SourceRef], backbone: Backbone, data: TaskData,
               setup: TransferSetup, base: TrainerConfig, run: RunFolder, attach: Any = None,
               loss: Any = None) -> dict[str, Any]:
    """Train one method with one seed on the target; return its metrics (and keep the model).

    ``attach(model) -> handle`` and ``loss(model, batch)`` replace the registry's attach and the
    task loss (methods with their own ``run``, e.g. a distilled student, use them)."""
    seed_everything(seed)
    model = copy.deepcopy(backbone.model)
    handle = attach(model) if attach is not None else _attach(method, model, refs, setup, backbone)
    classifier = build_classifier(model, data.task.num_labels, pooling=setup.pooling)
    learning_rate = setup.learning_rate or transfer_method(method).default_learning_rate
    config = replace(base, output_dir=str(run.path / f"{method}-seed{seed}"), seed=seed,
                     learning_rate=learning_rate, metric=None)
    reset_peak_memory()
    started = time.perf_counter()
    regularizer = getattr(handle, "regularization", None)
    result = train_classifier(classifier, data, config, regularizer=regularizer, **({"loss": loss} if loss else {}))
    train_time, peak = time.perf_counter() - started, peak_memory_mb()
    classifier.float()
    transfer_params = handle.num_parameters() if handle is not None else 0
    trainable = sum(p.numel() for p in classifier.parameters() if p.requires_grad)
    with handle.recording() if hasattr(handle, "recording") else contextlib.nullcontext():
        validation = data.evaluate(classifier, "validation")
    return {
        "method": method, "seed": seed, "learning_rate": learning_rate,
        "validation": validation, "test": data.evaluate(classifier, "test"),
        "transfer_parameters": transfer_params, "trainable_parameters": trainable,
        "train_time_s": train_time, "peak_memory_mb": peak, "train": result.to_dict(),
        "source_weights": handle.source_weights().tolist() if hasattr(handle, "source_weights") else None,
        "_handle": handle, "_classifier": classifier,
    }


def _heatmap(outcome: dict[str, Any], refs: list[SourceRef], run: RunFolder) -> str | None:
    handle = outcome["_handle"]
    if not hasattr(handle, "source_weights") or not distributed.is_main_process():
        return None
    weights = handle.source_weights().numpy()  # (layers, sources)
    method = outcome["method"]
    label = transfer_method(method).weights_label
    path = run.path / f"source_weights_{method}.png"
    plot_heatmap(weights, [f"layer {i}" for i in range(weights.shape[0])], [r.name for r in refs], path,
                 title=f"{method}: per-layer weight of each source", colorbar_label=label)
    return path.name


def summarise(outcomes: list[dict[str, Any]], metric: str, baseline: str | None = BASELINE) -> list[dict[str, Any]]:
    """One row per method: mean ± std over seeds of the target's primary metric.

    When ``baseline``'s runs are among ``outcomes``, each row also carries ``gain``: the mean over
    seeds of (method − baseline) on the same seed, test split (``gain_std`` its spread); the
    baseline's own row has gain 0.
    """
    rows = []
    for method in dict.fromkeys(o["method"] for o in outcomes):
        runs = [o for o in outcomes if o["method"] == method]
        test = [o["test"][metric] for o in runs]
        rows.append({
            "method": method, "seeds": [o["seed"] for o in runs], "metric": metric,
            "test_mean": statistics.fmean(test), "test_std": statistics.pstdev(test) if len(test) > 1 else 0.0,
            "validation_mean": statistics.fmean(o["validation"][metric] for o in runs),
            "transfer_parameters": runs[0]["transfer_parameters"],
            "trainable_parameters": runs[0]["trainable_parameters"],
            "train_time_s": statistics.fmean(o["train_time_s"] for o in runs),
            "peak_memory_mb": max(o["peak_memory_mb"] for o in runs),
        })
    reference = {o["seed"]: o["test"][metric] for o in outcomes if o["method"] == baseline}
    for row in rows if reference else []:
        gains = [o["test"][metric] - reference[o["seed"]] for o in outcomes
                 if o["method"] == row["method"] and o["seed"] in reference]
        row["gain"] = statistics.fmean(gains) if gains else None
        row["gain_std"] = statistics.pstdev(gains) if len(gains) > 1 else 0.0
    return rows


def run_transfer(setup: TransferSetup, base: TrainerConfig, run: RunFolder) -> dict[str, Any]:
    started = time.perf_counter()
    methods, seeds = setup.methods(), setup.seed_list()
    for method in methods:  # each method's own flags are checked before anything loads
        setup.method_config(method)
    backbone = load_encoder(setup.backbone)
    train_limit, eval_limit = setup.limits(source=False)
    target = setup.load(setup.target, max_train_samples=train_limit or 0, max_eval_samples=eval_limit or 0)
    logger.info("target %s: %d train / %d validation / %d test", target.name, len(target.train),
                len(target.validation), len(target.test))
    store = AdapterStore(setup.store)
    specs = [(spec, False) for spec in setup.source_list()]
    specs += [(setup.target, True)] if setup.include_target_adapter else []
    kinds = dict.fromkeys(transfer_method(m).source_kinds[0] for m in methods if transfer_method(m).uses_sources)
    prepared = [prepare_source(backbone, spec, setup, base, store, run, kind, is_target=is_target)
                for kind in kinds for spec, is_target in specs]
    refs, qualities = [r for r, _ in prepared], [q for _, q in prepared]
    run.write_json("config.json", {
        "job": "transfer", "setup": asdict(setup), "trainer": asdict(base), "backbone": backbone.signature(),
        "target": target.describe(), "sources": [asdict(r) for r in refs], "environment": environment(),
    })
    data = TaskData(target, backbone.tokenizer, setup.max_length, model_config=backbone.config)
    outcomes, plots = [], {}
    for method in methods:
        for index, seed in enumerate(seeds):
            logger.info("stage 2: %s, seed %d", method, seed)
            spec = transfer_method(method)
            own = [r for r in refs if r.kind in spec.source_kinds]  # this method's stage-1 kind
            if spec.run is not None:
                outcome = spec.run(method, seed, own, backbone, data, setup, base, run, outcomes)
            else:
                outcome = run_method(method, seed, own, backbone, data, setup, base, run)
            if index == 0:
                plots[method] = _heatmap(outcome, own, run)
                _save_first(outcome, target, backbone, run)
            outcomes.append(outcome)
    return _metrics(outcomes, target, refs, plots, run, time.perf_counter() - started, qualities,
                    BASELINE if BASELINE in methods else None)


def _save_first(outcome: dict[str, Any], target: Task, backbone: Backbone, run: RunFolder) -> None:
    handle, head = outcome["_handle"], outcome["_classifier"].head
    if not distributed.is_main_process():
        return
    extra = {"task": target.describe(), "label_names": target.label_names, "metrics": outcome["test"]}
    if handle is not None:
        handle.save(run.path / f"model-{outcome['method']}", head=head, backbone_name=backbone.name, extra=extra)


def _metrics(outcomes: list[dict[str, Any]], target: Task, refs: list[SourceRef], plots: dict,
             run: RunFolder, wall: float, qualities: list[dict[str, Any]] | None = None,
             baseline: str | None = BASELINE) -> dict[str, Any]:
    clean = [{k: v for k, v in o.items() if not k.startswith("_")} for o in outcomes]
    metrics = {"target": target.name, "metric": target.metric, "sources": [r.name for r in refs],
               "source_quality": qualities or [], "weak_sources": [q["name"] for q in qualities or [] if q["weak"]],
               "baseline": baseline, "summary": summarise(clean, target.metric, baseline), "runs": clean,
               "plots": plots, "wall_time_s": wall}
    run.write_json("metrics.json", metrics)
    return metrics
