"""The DeepSpeed-backed trainer: resume equality, NaN handling, accumulation, early stopping, ranks."""

from __future__ import annotations

import json
import os

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from plmkit import distributed
from plmkit.trainer import NonFiniteLossError, Trainer, TrainerConfig, TrainerConfigError

N_EXAMPLES = 48


def _data():
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(N_EXAMPLES, 6, generator=generator)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).long()
    return [{"x": x[i], "y": y[i]} for i in range(N_EXAMPLES)]


def _model(dropout: float = 0.2, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(6, 16), nn.Dropout(dropout), nn.Tanh(), nn.Linear(16, 2))
    model[0].bias.requires_grad_(False)  # a frozen parameter must stay untouched
    return model


def _loss(model, batch):
    dtype = next(model.parameters()).dtype
    return F.cross_entropy(model(batch["x"].to(dtype)).float(), batch["y"])


def _accuracy(data):
    x = torch.stack([d["x"] for d in data])
    y = torch.stack([d["y"] for d in data])

    def evaluate(model):
        dtype = next(model.parameters()).dtype
        return {"accuracy": (model(x.to(dtype)).argmax(-1) == y).float().mean().item()}

    return evaluate


def _config(tmp_path, name, **overrides):
    base = dict(output_dir=str(tmp_path / name), epochs=3, batch_size=4, learning_rate=5e-2,
                eval_every_steps=5, progress=False, load_best_at_end=False, warmup_ratio=0.1)
    return TrainerConfig(**{**base, **overrides})


def _params(model):
    return {n: p.detach().clone() for n, p in model.state_dict().items()}


class _Interrupt(Exception):
    pass


@pytest.mark.parametrize("stage,multipliers", [(0, ""), (2, ""), (3, ""), (2, "3.*=10")])
def test_resume_reproduces_an_uninterrupted_run(tmp_path, stage, multipliers):
    data = _data()
    reference = _model()
    Trainer(reference, _loss, data, _config(tmp_path, "a", zero_stage=stage, lr_multipliers=multipliers),
            evaluate_fn=_accuracy(data)).train()

    calls = {"n": 0}

    def crashing_loss(model, batch):
        calls["n"] += 1
        if calls["n"] == 13:  # after the checkpoint at step 10, mid-epoch
            raise _Interrupt
        return _loss(model, batch)

    with pytest.raises(_Interrupt):
        Trainer(_model(), crashing_loss, data, _config(tmp_path, "b", zero_stage=stage, lr_multipliers=multipliers),
                evaluate_fn=_accuracy(data)).train()
    assert json.loads((tmp_path / "b/checkpoints/latest.json").read_text())["global_step"] == 10

    resumed = _model()
    result = Trainer(resumed, _loss, data,
                     _config(tmp_path, "b", zero_stage=stage, resume=True, lr_multipliers=multipliers),
                     evaluate_fn=_accuracy(data)).train()
    assert result.global_step == 3 * N_EXAMPLES // 4
    expected, got = _params(reference), _params(resumed)
    for name in expected:
        assert torch.equal(expected[name], got[name]), name
    assert torch.equal(resumed[0].bias, _model()[0].bias)  # frozen stays frozen


@pytest.mark.parametrize("changed", ["", "3.*=20"])
def test_resume_refuses_a_checkpoint_trained_with_other_learning_rate_factors(tmp_path, changed):
    """Another group count would fail inside torch; the same count would silently keep the old rates."""
    data = _data()
    Trainer(_model(), _loss, data, _config(tmp_path, "a", lr_multipliers="3.*=10"),
            evaluate_fn=_accuracy(data)).train()
    with pytest.raises(TrainerConfigError, match="optimiser groups"):
        Trainer(_model(), _loss, data, _config(tmp_path, "a", resume=True, lr_multipliers=changed),
                evaluate_fn=_accuracy(data)).train()


def test_nan_loss_stops_with_clear_error_and_keeps_last_good_checkpoint(tmp_path):
    data = _data()
    calls = {"n": 0}

    def poisoned(model, batch):
        calls["n"] += 1
        loss = _loss(model, batch)
        return loss * float("nan") if calls["n"] == 8 else loss

    model = _model()
    with pytest.raises(NonFiniteLossError, match=r"nan.*step 7.*step-00000005"):
        Trainer(model, poisoned, data, _config(tmp_path, "nan"), evaluate_fn=_accuracy(data)).train()
    assert all(torch.isfinite(p).all() for p in model.parameters())
    checkpoints = sorted(p.name for p in (tmp_path / "nan/checkpoints").iterdir())
    assert checkpoints == ["latest.json", "step-00000005"]


def test_gradient_accumulation_matches_the_larger_batch(tmp_path):
    data = _data()
    big, accumulated = _model(dropout=0.0), _model(dropout=0.0)
    Trainer(big, _loss, data, _config(tmp_path, "big", batch_size=8, save_checkpoints=False)).train()
    Trainer(accumulated, _loss, data,
            _config(tmp_path, "acc", batch_size=4, grad_accum_steps=2, save_checkpoints=False)).train()
    for (name, p), q in zip(big.named_parameters(), accumulated.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


def test_only_trainable_parameters_reach_the_optimizer(tmp_path):
    data = _data()
    model = _model()
    trainer = Trainer(model, _loss, data, _config(tmp_path, "opt", epochs=1, save_checkpoints=False))
    trainer.train()
    in_optimizer = {id(p) for group in trainer.engine.optimizer.param_groups for p in group["params"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert in_optimizer == trainable


@pytest.mark.parametrize("stage", [0, 2])
def test_lr_multipliers_scale_the_first_adam_step_of_matching_parameters(tmp_path, stage):
    # Adam's first step moves every weight by lr * g / (|g| + eps), i.e. by the learning rate itself
    data = _data()
    before, model = _params(_model(dropout=0.0)), _model(dropout=0.0)
    config = _config(tmp_path, "mult", max_steps=1, warmup_ratio=0.0, learning_rate=1e-2, zero_stage=stage,
                     lr_multipliers="3.*=10, 0.weight=0.5", save_checkpoints=False)
    trainer = Trainer(model, _loss, data, config)
    trainer.train()
    moved = {name: (param.detach() - before[name]).abs() for name, param in model.named_parameters()}
    for name, factor in {"0.weight": 0.5, "3.weight": 10.0, "3.bias": 10.0}.items():
        torch.testing.assert_close(moved[name].median().item(), 1e-2 * factor, rtol=1e-3, atol=0, msg=name)
    assert torch.equal(moved["0.bias"], torch.zeros_like(moved["0.bias"]))  # frozen: in no group
    assert trainer.engine.get_lr()[0] == 0.0  # group 0 is the plain rate, decayed to 0 after the only step
    rates = sorted(group["initial_lr"] for group in trainer.engine.optimizer.param_groups)
    assert rates == [5e-3, 1e-1, 1e-1]  # 0.weight; 3.weight and 3.bias (a decay and a no-decay group)


def test_lr_multipliers_refuse_bad_entries_and_patterns_that_match_nothing(tmp_path):
    for text in ("3.weight", "3.*=0", "3.*=fast", "=2", "3.*=nan"):
        with pytest.raises(TrainerConfigError, match="--lr-multipliers entry"):
            TrainerConfig(lr_multipliers=text)
    config = _config(tmp_path, "nomatch", lr_multipliers="head*=10")
    with pytest.raises(TrainerConfigError, match=r"'head\*' match no trainable parameter.*0\.weight"):
        Trainer(_model(), _loss, _data(), config).train()
    frozen_only = _config(tmp_path, "frozen", lr_multipliers="0.bias=10")  # frozen parameters do not count
    with pytest.raises(TrainerConfigError, match="match no trainable parameter"):
        Trainer(_model(), _loss, _data(), frozen_only).train()


def test_early_stopping_and_best_checkpoint(tmp_path):
    data = _data()
    scores = iter([0.5, 0.9, 0.7, 0.6, 0.95, 0.99])
    model = _model()
    result = Trainer(model, _loss, data,
                     _config(tmp_path, "es", eval_every_steps=2, early_stopping_patience=2, epochs=5,
                             load_best_at_end=True),
                     evaluate_fn=lambda m: {"accuracy": next(scores)}).train()
    assert result.stopped_early and result.global_step == 8
    assert result.best_metric == 0.9 and result.best_step == 4
    from safetensors.torch import load_file

    best = load_file(str(tmp_path / "es/best.safetensors"))
    for name, param in model.named_parameters():
        if param.requires_grad:
            assert torch.equal(best[name], param.detach()), name  # best weights restored at the end


def test_bf16_and_zero3_train(tmp_path):
    data = _data()
    model = _model(dropout=0.0)
    result = Trainer(model, _loss, data, _config(tmp_path, "z3", precision="bf16", zero_stage=3, epochs=4),
                     evaluate_fn=_accuracy(data)).train()
    assert result.best_metric is not None and result.best_metric > 0.7


def test_bad_settings_give_clear_errors(tmp_path):
    data = _data()
    with pytest.raises(TrainerConfigError, match="fewer than one global batch"):
        Trainer(_model(), _loss, data[:3], _config(tmp_path, "small")).train()
    frozen = _model()
    frozen.requires_grad_(False)
    with pytest.raises(TrainerConfigError, match="no trainable parameters"):
        Trainer(frozen, _loss, data, _config(tmp_path, "frozen")).train()
    with pytest.raises(TrainerConfigError, match="precision"):
        TrainerConfig(precision="fp8")
    if not torch.cuda.is_available():
        with pytest.raises(TrainerConfigError, match="fp16 needs a GPU"):
            Trainer(_model(), _loss, data, _config(tmp_path, "fp16", precision="fp16")).train()


# ------------------------------------------------------------------ two processes (gloo)
def _rank_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    data = _data()
    for stage in (0, 3):
        model = _model(dropout=0.0)
        config = TrainerConfig(output_dir=os.path.join(out_dir, f"run{stage}"), epochs=2, batch_size=4,
                               learning_rate=5e-2, zero_stage=stage, progress=False, save_checkpoints=False)
        trainer = Trainer(model, _loss, data, config)
        trainer.train()
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters()), enabled=stage == 3):
            torch.save(_params(model), os.path.join(out_dir, f"stage{stage}_rank{rank}.pt"))
    distributed.shutdown()


@pytest.mark.distributed
def test_two_processes_stay_identical_and_match_one_process(tmp_path):
    world = 2
    torch.multiprocessing.spawn(_rank_worker, args=(world, distributed.free_port(), str(tmp_path)),
                                nprocs=world, join=True)
    data = _data()
    single = _model(dropout=0.0)
    Trainer(single, _loss, data, TrainerConfig(output_dir=str(tmp_path / "single"), epochs=2, batch_size=8,
                                               learning_rate=5e-2, progress=False, save_checkpoints=False)).train()
    for stage in (0, 3):
        rank0 = torch.load(tmp_path / f"stage{stage}_rank0.pt")
        rank1 = torch.load(tmp_path / f"stage{stage}_rank1.pt")
        for name, value in rank0.items():
            assert torch.equal(value, rank1[name]), (stage, name)
            torch.testing.assert_close(value, single.state_dict()[name], rtol=1e-5, atol=1e-6)


def test_a_second_job_after_shutdown_in_the_same_process_trains(tmp_path):
    """The CLI tears the process group down after each job; a later job in the process must start afresh."""
    data = _data()
    Trainer(_model(), _loss, data, _config(tmp_path, "first", epochs=1)).train()
    distributed.shutdown()
    assert not torch.distributed.is_initialized()
    result = Trainer(_model(), _loss, data, _config(tmp_path, "second", epochs=1, zero_stage=2)).train()
    assert result.global_step > 0


# ------------------------------------------------------------------ loss terms and compile
def test_every_named_loss_term_is_logged_as_a_running_mean(tmp_path):
    data = _data()
    seen = []

    def named(model, batch):
        task = _loss(model, batch)
        penalty = sum(p.square().sum() for p in model.parameters() if p.requires_grad)
        seen.append((float(task.detach()), float(penalty.detach())))
        return {"loss": task + 1e-3 * penalty, "task": task, "penalty": penalty}

    config = _config(tmp_path, "terms", epochs=1, log_every_steps=4, save_checkpoints=False)
    Trainer(_model(), named, data, config).train()
    records = [json.loads(line) for line in (tmp_path / "terms/train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [4, 8, 12]
    for record, start in zip(records, (0, 4, 8), strict=True):
        window = seen[start:start + 4]
        task = sum(t for t, _ in window) / 4
        penalty = sum(p for _, p in window) / 4
        assert record["task"] == pytest.approx(task, rel=1e-6)
        assert record["penalty"] == pytest.approx(penalty, rel=1e-6)
        assert record["loss"] == pytest.approx(task + 1e-3 * penalty, rel=1e-5)


@pytest.mark.slow  # compiling takes over a minute on a shared CPU
def test_compiled_training_matches_eager(tmp_path):
    data = _data()
    losses: dict[bool, list[float]] = {False: [], True: []}
    models = {}
    for compiled in (False, True):
        def recorded(model, batch, compiled=compiled):
            value = _loss(model, batch)
            losses[compiled].append(float(value.detach()))
            return value

        models[compiled] = _model(dropout=0.0)
        config = _config(tmp_path, f"compile{compiled}", epochs=1, compile=compiled, save_checkpoints=False)
        Trainer(models[compiled], recorded, data, config).train()
    assert len(losses[True]) == len(losses[False]) == N_EXAMPLES // 4
    assert losses[True] == pytest.approx(losses[False], rel=1e-4, abs=1e-5)
    assert not torch.equal(models[True][3].weight, _model(dropout=0.0)[3].weight)  # it did train
    for (name, eager), compiled in zip(models[False].named_parameters(), models[True].parameters(), strict=True):
        torch.testing.assert_close(eager, compiled, rtol=1e-4, atol=1e-5, msg=name)
