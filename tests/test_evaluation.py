"""The evaluator contract: a dict of scores plus a declared primary metric the trainer selects on."""

from __future__ import annotations

import dataclasses

import pytest

from plmkit.errors import ConfigError
from plmkit.evaluation import Evaluator, TaskEvaluator, selection
from plmkit.trainer import Trainer
from tests.test_trainer import _config, _data, _loss, _model


class _Scripted:
    """An evaluator whose scores follow a script; it declares a lower-is-better primary metric."""

    primary_metric = "mse"
    greater_is_better = False

    def __init__(self, mse: list[float]) -> None:
        self.values = iter(mse)
        self.calls = 0

    def __call__(self, model) -> dict[str, float]:
        self.calls += 1
        return {"accuracy": 0.9 if self.calls == 1 else 0.1, "mse": next(self.values)}


def test_trainer_selects_on_the_evaluators_primary_metric(tmp_path):
    scripted = _Scripted([0.5, 0.2, 0.4, 0.3])
    config = _config(tmp_path, "run", eval_every_steps=2, max_steps=8)
    result = Trainer(_model(), _loss, _data(), config, evaluate_fn=scripted).train()
    # the first key (accuracy, larger better) would pick step 2; the declared mse, smaller better, step 4
    assert result.best_metric == 0.2 and result.best_step == 4
    assert config.metric is None  # chosen without editing the caller's settings


def test_an_explicit_metric_overrides_the_declared_one(tmp_path):
    config = _config(tmp_path, "run", eval_every_steps=2, max_steps=8, metric="mse", greater_is_better=True)
    result = Trainer(_model(), _loss, _data(), config, evaluate_fn=_Scripted([0.5, 0.2, 0.4, 0.3])).train()
    assert result.best_metric == 0.5 and result.best_step == 2


def test_selection_order():
    assert selection(_Scripted([]), None, True, "accuracy") == ("mse", False)
    assert selection(_Scripted([]), "accuracy", True, "x") == ("accuracy", True)
    assert selection(lambda m: {}, None, False, "first") == ("first", False)


@pytest.fixture
def task_data(make_encoder, tmp_path):
    from plmkit.tasks import load_task
    from plmkit.textclf import TaskData
    from tests.test_cli import _write_task

    backbone = make_encoder("bert")
    return TaskData(load_task(str(_write_task(tmp_path / "task"))), backbone.tokenizer, 32), backbone


def test_task_evaluator_scores_a_split_and_declares_the_task_metric(task_data):
    from plmkit.models import build_classifier

    data, backbone = task_data
    evaluator = TaskEvaluator(data, "test", batch_size=5)
    assert isinstance(evaluator, Evaluator)
    assert evaluator.primary_metric == data.task.metric == "accuracy" and evaluator.greater_is_better
    model = build_classifier(backbone.model, data.task.num_labels)
    scores = evaluator(model)
    assert scores == data.evaluate(model, "test")
    assert 0.0 <= scores["accuracy"] <= 1.0
    with pytest.raises(ConfigError, match="split"):
        TaskEvaluator(data, "dev")


def test_train_classifier_leaves_its_config_untouched(task_data, tmp_path):
    from plmkit.models import build_classifier
    from plmkit.textclf import train_classifier
    from plmkit.trainer import TrainerConfig

    data, backbone = task_data
    config = TrainerConfig(output_dir=str(tmp_path / "run"), epochs=1, batch_size=8, progress=False,
                           save_checkpoints=False, greater_is_better=False)
    before = dataclasses.asdict(config)
    result = train_classifier(build_classifier(backbone.model, data.task.num_labels), data, config)
    assert dataclasses.asdict(config) == before
    assert result.best_metric == max(r["accuracy"] for r in result.history)  # task metric, larger is better


def test_predict_batches_by_length_but_returns_input_order(make_encoder):
    """Length-sorted batching must not reorder outputs: each row equals its own unpadded forward."""
    import torch

    from plmkit.models import build_classifier
    from plmkit.textclf import PadCollator, predict

    backbone = make_encoder("bert")
    model = build_classifier(backbone.model, 3).eval()
    torch.manual_seed(0)
    lengths = [3, 9, 5, 12, 4, 7, 2]  # mixed, not sorted
    features = [{"input_ids": [1] + torch.randint(5, 30, (n,)).tolist(), "attention_mask": [1] * (n + 1),
                 "labels": torch.tensor(i % 3)} for i, n in enumerate(lengths)]
    logits, labels = predict(model, features, PadCollator(0), batch_size=3)
    with torch.no_grad():
        alone = torch.cat([model(input_ids=torch.tensor([f["input_ids"]]),
                                 attention_mask=torch.tensor([f["attention_mask"]])) for f in features])
    assert labels.tolist() == [i % 3 for i in range(len(lengths))]
    assert torch.allclose(torch.from_numpy(logits), alone, atol=1e-5)
