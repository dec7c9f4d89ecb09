"""Step-robust training on two ranks (gloo, CPU): every rank draws the same step counts.

The trainer seeds the global RNG with seed + rank, so counts drawn from it would differ between ranks
and ZeRO-3 (which gathers parameters around each module call) would wait on calls one rank never
makes. The schedule draws from (seed, counter) buffers instead; this test trains a tiny ODE model
with ZeRO-3 in two processes and compares the counts each rank actually used.
"""

from __future__ import annotations

import os

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from plmkit import distributed
from plmkit.compress.ode import ODEConfig, ODEEncoder, StepSchedule
from plmkit.trainer import Trainer, TrainerConfig

CHOICES, SEED, EXAMPLES, BATCH, EPOCHS, WORLD = "4,2,1", 7, 48, 4, 2, 2


class _Embed(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.table = nn.Embedding(30, 8)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.table(input_ids)


class _TinyODE(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = ODEEncoder(_Embed(), ODEConfig(depth=4, train_steps=CHOICES), hidden=8, heads=2,
                                  intermediate=16, token_type_ids=False)
        self.encoder.schedule.reseed(SEED)
        self.head = nn.Linear(8, 2)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(input_ids, attention_mask).mean(1))


def _data() -> list[dict[str, torch.Tensor]]:
    generator = torch.Generator().manual_seed(0)
    ids = torch.randint(1, 30, (EXAMPLES, 6), generator=generator)
    labels = (ids[:, 0] > 15).long()
    return [{"input_ids": ids[i], "attention_mask": torch.ones(6, dtype=torch.long), "y": labels[i]}
            for i in range(EXAMPLES)]


def _loss(model: nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    return F.cross_entropy(model(batch["input_ids"], batch["attention_mask"]).float(), batch["y"])


def _rank_worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), LOCAL_RANK=str(rank),
                      WORLD_SIZE=str(world))
    torch.set_num_threads(1)
    model = _TinyODE()
    used: list[int] = []
    model.encoder.register_forward_hook(lambda m, args, out: used.append(m.last_evals) if m.training else None)
    config = TrainerConfig(output_dir=os.path.join(out_dir, "run"), epochs=EPOCHS, batch_size=BATCH,
                           learning_rate=1e-2, zero_stage=3, seed=SEED, progress=False, save_checkpoints=False)
    Trainer(model, _loss, _data(), config).train()
    # the global RNG after training: the trainer seeded it with seed + rank, so it differs between ranks
    torch.save({"used": used, "counter": int(model.encoder.schedule.counter), "global": torch.rand(4)},
               os.path.join(out_dir, f"rank{rank}.pt"))
    distributed.shutdown()


@pytest.mark.slow  # two processes, each importing DeepSpeed: ~80 s on the shared 2-core CPU under load
@pytest.mark.distributed
def test_step_counts_are_identical_across_two_ranks_under_zero3(tmp_path):
    torch.multiprocessing.spawn(_rank_worker, args=(WORLD, distributed.free_port(), str(tmp_path)),
                                nprocs=WORLD, join=True)
    ranks = [torch.load(tmp_path / f"rank{r}.pt") for r in range(WORLD)]
    per_rank = EPOCHS * EXAMPLES // (BATCH * WORLD)  # training forwards on each rank
    assert len(ranks[0]["used"]) == per_rank and ranks[0]["counter"] == per_rank
    assert ranks[0]["used"] == ranks[1]["used"]
    expected = StepSchedule(tuple(int(n) for n in CHOICES.split(",")), seed=SEED)
    assert ranks[0]["used"] == [expected.peek(i) for i in range(per_rank)]
    assert len(set(ranks[0]["used"])) > 1  # the draw does vary over training
    assert not torch.equal(ranks[0]["global"], ranks[1]["global"])  # while the global RNG differs per rank
