"""Trainer reliability: safe resume, NaN stops that name a usable checkpoint, settings checked at the door,
and a training log without duplicate steps after a resume."""

from __future__ import annotations

import json
import os
import random

import numpy as np
import pytest
import torch

from plmkit.checkpoints import UnsafeCheckpointError, rng_state, set_rng_state, trim_log, weights_are_sane
from plmkit.errors import ConfigError
from plmkit.trainer import NonFiniteLossError, Trainer, TrainerConfig, TrainerConfigError
from tests.test_trainer import N_EXAMPLES, _accuracy, _config, _data, _Interrupt, _loss, _model


class _RunsCode:
    """Unpickling this calls os.system: what a crafted checkpoint file would do."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _crash_after(calls: int):
    count = {"n": 0}

    def loss(model, batch):
        count["n"] += 1
        if count["n"] == calls:
            raise _Interrupt
        return _loss(model, batch)

    return loss


def _interrupted_run(tmp_path, name, **overrides):
    """A run stopped at micro-step 13, after its checkpoint at step 10."""
    data = _data()
    with pytest.raises(_Interrupt):
        Trainer(_model(), _crash_after(13), data, _config(tmp_path, name, **overrides),
                evaluate_fn=_accuracy(data)).train()
    return tmp_path / name / "checkpoints" / "step-00000010"


def _resume(tmp_path, name, loss=_loss, **overrides):
    data = _data()
    model = _model()
    result = Trainer(model, loss, data, _config(tmp_path, name, resume=True, **overrides),
                     evaluate_fn=_accuracy(data)).train()
    return model, result


# ------------------------------------------------------------------------ no unpickling on resume
@pytest.mark.parametrize("victim", ["mp_rank_00_model_states.pt", "zero_pp_rank_0_mp_rank_00_optim_states.pt"])
def test_a_crafted_pickle_in_a_checkpoint_is_refused_and_does_not_run(tmp_path, victim):
    stage = 0 if victim.startswith("mp_rank") else 2
    folder = _interrupted_run(tmp_path, "run", zero_stage=stage)
    marker = tmp_path / "code-ran"
    torch.save({"module": _RunsCode(str(marker))}, folder / victim)
    with pytest.raises(UnsafeCheckpointError, match=f"refused to load .*{victim}.*weights-only"):
        _resume(tmp_path, "run", zero_stage=stage)
    assert not marker.exists()


def test_a_crafted_rng_pickle_is_never_read(tmp_path):
    folder = _interrupted_run(tmp_path, "run")
    marker = tmp_path / "code-ran"
    torch.save(_RunsCode(str(marker)), folder / "rng_rank0.pt")  # where older versions kept the RNG state
    assert json.loads((folder / "rng_rank0.json").read_text())["torch"]  # the state is plain JSON
    _, result = _resume(tmp_path, "run")
    assert result.global_step == 3 * N_EXAMPLES // 4
    assert not marker.exists()


def test_rng_state_round_trips_through_json():
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    random.gauss(0, 1)  # a cached gaussian is part of python's state
    saved = json.loads(json.dumps(rng_state()))
    first = (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), torch.rand(3).tolist())
    set_rng_state(saved)
    assert (random.random(), random.gauss(0, 1), np.random.rand(3).tolist(), torch.rand(3).tolist()) == first


# ------------------------------------------------------------------------------- NaN stop
def _diverging(blow_up_at: int, nan_at: int):
    """At micro-step ``blow_up_at`` the weights jump to ~1e20 (a diverged run); ``nan_at`` gives NaN."""
    count = {"n": 0}

    def loss(model, batch):
        count["n"] += 1
        if count["n"] == blow_up_at:
            with torch.no_grad():
                for param in model.parameters():
                    if param.requires_grad:
                        param.mul_(1e20)
        value = _loss(model, batch)
        return value * float("nan") if count["n"] == nan_at else value

    return loss


def test_nan_stop_names_a_checkpoint_with_sane_weights(tmp_path):
    data = _data()
    with pytest.raises(NonFiniteLossError, match=r"Last good checkpoint: \S*step-00000005\b"):
        Trainer(_model(), _diverging(blow_up_at=9, nan_at=12), data, _config(tmp_path, "run"),
                evaluate_fn=_accuracy(data)).train()
    root = tmp_path / "run" / "checkpoints"
    assert json.loads((root / "latest.json").read_text()) == {"tag": "step-00000005", "global_step": 5}
    assert sorted(p.name for p in root.glob("step-*")) == ["step-00000005"]
    model, result = _resume(tmp_path, "run")  # resuming from the named checkpoint trains to the end
    assert result.global_step == 3 * N_EXAMPLES // 4
    assert weights_are_sane(model.parameters()) and max(p.abs().max() for p in model.parameters()) < 100


def test_a_checkpoint_counts_as_good_only_after_a_finite_loss_from_its_weights(tmp_path):
    data = _data()
    with pytest.raises(NonFiniteLossError, match=r"loss became nan.*step-00000005\b"):
        Trainer(_model(), _diverging(blow_up_at=0, nan_at=11), data, _config(tmp_path, "run"),
                evaluate_fn=_accuracy(data)).train()
    assert json.loads((tmp_path / "run/checkpoints/latest.json").read_text())["global_step"] == 5


def test_nan_before_any_good_checkpoint_says_there_is_none(tmp_path):
    data = _data()
    with pytest.raises(NonFiniteLossError, match="Last good checkpoint: none"):
        Trainer(_model(), _diverging(blow_up_at=0, nan_at=3), data, _config(tmp_path, "run"),
                evaluate_fn=_accuracy(data)).train()


def test_weights_are_sane_rejects_nan_inf_and_overflowing_norms():
    assert weights_are_sane([torch.ones(3), torch.full((2,), 1e15)])
    assert not weights_are_sane([torch.ones(3), torch.tensor([float("nan")])])
    assert not weights_are_sane([torch.tensor([float("inf")])])
    assert not weights_are_sane([torch.full((4,), 1e20)])  # each finite, the norm is not


# --------------------------------------------------------------------- settings at the door
@pytest.mark.parametrize("field, value, flag", [
    ("learning_rate", float("nan"), "--learning-rate"), ("learning_rate", -1e-3, "--learning-rate"),
    ("learning_rate", 0.0, "--learning-rate"), ("learning_rate", 1e38, "--learning-rate"),
    ("learning_rate", 11.0, "--learning-rate"), ("weight_decay", -0.1, "--weight-decay"),
    ("weight_decay", float("inf"), "--weight-decay"), ("warmup_ratio", float("nan"), "--warmup-ratio"),
    ("max_grad_norm", float("nan"), "--max-grad-norm"), ("eval_every_steps", 0, "--eval-every-steps"),
    ("early_stopping_patience", 0, "--early-stopping-patience"), ("batch_size", 2.5, "--batch-size"),
    ("epochs", 0, "--epochs"), ("num_workers", -1, "--num-workers"), ("max_steps", 0, "--max-steps"),
])
def test_numeric_settings_are_checked_with_one_line_naming_the_flag(field, value, flag):
    with pytest.raises(TrainerConfigError, match=flag) as error:
        TrainerConfig(**{field: value})
    assert "\n" not in str(error.value) and isinstance(error.value, ConfigError)


def test_sane_extremes_are_accepted():
    TrainerConfig(learning_rate=10.0, weight_decay=0.0, max_grad_norm=0.0, eval_every_steps=None, max_steps=1)


def _task_and_tokenizer(make_encoder, tmp_path):
    from plmkit.tasks import load_task
    from tests.test_cli import _write_task

    backbone = make_encoder("bert")
    return load_task(str(_write_task(tmp_path / "task"))), backbone


@pytest.mark.parametrize("max_length", [0, -5])
def test_task_data_refuses_a_max_length_that_disables_truncation(make_encoder, tmp_path, max_length):
    from plmkit.textclf import TaskData

    task, backbone = _task_and_tokenizer(make_encoder, tmp_path)
    with pytest.raises(ConfigError, match="--max-length"):
        TaskData(task, backbone.tokenizer, max_length)


def test_task_data_refuses_a_max_length_above_the_position_limit(make_encoder, tmp_path):
    from plmkit.textclf import TaskData

    task, backbone = _task_and_tokenizer(make_encoder, tmp_path)
    limit = backbone.tokenizer.model_max_length
    with pytest.raises(ConfigError, match=f"--max-length {limit + 1} .* limit of {limit} tokens"):
        TaskData(task, backbone.tokenizer, limit + 1)
    backbone.tokenizer.model_max_length = int(1e30)  # a tokenizer that does not know its limit
    positions = backbone.model.config.max_position_embeddings
    with pytest.raises(ConfigError, match=f"limit of {positions} tokens"):
        TaskData(task, backbone.tokenizer, positions + 1, model_config=backbone.model.config)
    assert len(TaskData(task, backbone.tokenizer, limit).train) == 48


# --------------------------------------------------------------------------- log after resume
def test_a_resumed_run_logs_each_step_once(tmp_path):
    _interrupted_run(tmp_path, "run", log_every_steps=1)
    log = tmp_path / "run" / "train_log.jsonl"
    before = [json.loads(line) for line in log.read_text().splitlines()]
    assert max(r["step"] for r in before if "step" in r) == 12  # steps 11-12 ran after the checkpoint
    _resume(tmp_path, "run", log_every_steps=1)
    records = [json.loads(line) for line in log.read_text().splitlines()]
    steps = [r["step"] for r in records if "step" in r]
    evals = [r["eval"]["step"] for r in records if "eval" in r]
    assert steps == list(range(1, 3 * N_EXAMPLES // 4 + 1))
    assert evals == sorted(set(evals)) and evals[:2] == [5, 10]


def test_trim_log_keeps_records_up_to_the_step(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text("".join(json.dumps(r) + "\n" for r in
                           [{"step": 1}, {"eval": {"step": 1}}, {"step": 2}, {"eval": {"step": 2}}, {"note": 1}]))
    assert trim_log(log, 1) == 2
    assert [json.loads(line) for line in log.read_text().splitlines()] == [
        {"step": 1}, {"eval": {"step": 1}}, {"note": 1}]


def test_a_zero_dimensional_parameter_is_one_clear_error(tmp_path):
    """DeepSpeed's broadcast crashes deep inside torch on a 0-d parameter; the trainer names it first."""
    from torch import nn



    class Scaled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.gain = nn.Parameter(torch.tensor(1.0))
            self.linear = nn.Linear(2, 1)

        def forward(self, x):
            return self.gain * self.linear(x)

    data = [torch.randn(2) for _ in range(8)]
    trainer = Trainer(Scaled(), lambda m, b: m(b).pow(2).mean(), data,
                      TrainerConfig(output_dir=str(tmp_path), epochs=1, batch_size=4, progress=False),
                      collate_fn=torch.stack)
    with pytest.raises(TrainerConfigError, match=r"gain.*shape \(1,\)"):
        trainer.train()
