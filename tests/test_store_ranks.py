"""The source store under two ranks (gloo, CPU): rank 0 decides for every rank whether to train or reuse.

In a job launched with several ranks all of them train a missing source together, so they must all
take the same branch. Each rank looking the key up for itself could split them when another job
installs the entry in between (one rank trains and waits in a collective, the other returns); here
rank 1 is made to see such an entry early, and must follow rank 0 anyway.
"""

from __future__ import annotations

import json
import os
from datetime import timedelta
from pathlib import Path

import pytest
import torch

from plmkit import distributed
from plmkit.mtl.store import AdapterStore
from plmkit.saving import CONFIG, WEIGHTS

KEY, WORLD = "tiny/adapter/task/abc", 2


def _worker(rank: int, port: int, root: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=WORLD)
    store = AdapterStore(Path(root) / "store")
    if rank == 1:  # this rank believes another job already installed the entry
        store.get = lambda key: store.path(key)
    calls = []

    def build() -> Path:
        calls.append(rank)
        folder = Path(root) / f"built{rank}"
        folder.mkdir()
        (folder / CONFIG).write_text(json.dumps({"rank": rank}))
        (folder / WEIGHTS).write_bytes(b"w")
        torch.distributed.barrier()  # stands for the collectives of training together
        return folder

    first = store.get_or_put(KEY, build)
    second = store.get_or_put(KEY, build)
    answer = {"first": [str(first[0]), first[1]], "second": [str(second[0]), second[1]], "builds": len(calls),
              "broadcast": distributed.broadcast_object(f"from {rank}")}
    (Path(root) / f"rank{rank}.json").write_text(json.dumps(answer))
    torch.distributed.destroy_process_group()


@pytest.mark.distributed  # two plain gloo processes, no DeepSpeed: a few seconds
def test_every_rank_follows_rank_0_between_training_and_reusing(tmp_path):
    torch.multiprocessing.spawn(_worker, args=(distributed.free_port(), str(tmp_path)), nprocs=WORLD, join=True)
    answers = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(WORLD)]
    entry = str(tmp_path / "store" / KEY)
    for answer in answers:
        assert answer["first"] == [entry, False] and answer["builds"] == 1  # both trained, once
        assert answer["second"] == [entry, True]  # then both reuse
        assert answer["broadcast"] == "from 0"
    assert json.loads((tmp_path / "store" / KEY / CONFIG).read_text()) == {"rank": 0}  # rank 0 installed it
    assert not (tmp_path / "store" / ".locks").exists() or all(
        p.suffix == ".lock" for p in (tmp_path / "store" / ".locks").iterdir())


def _failing_worker(rank: int, port: int, root: str, failing_rank: int, stage: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(WORLD))
    torch.distributed.init_process_group("gloo", rank=rank, world_size=WORLD, timeout=timedelta(seconds=60))
    store = AdapterStore(Path(root) / "store")
    if stage == "install" and rank == failing_rank:
        store._install = lambda key, folder: (_ for _ in ()).throw(OSError("disk full"))

    def build() -> Path:
        folder = Path(root) / f"built{rank}"
        folder.mkdir()
        (folder / CONFIG).write_text("{}")
        (folder / WEIGHTS).write_bytes(b"w")
        torch.distributed.barrier()  # training together went fine ...
        if stage == "build" and rank == failing_rank:
            raise ValueError("saving the trained module failed")  # ... then one rank fails alone
        return folder

    try:
        store.get_or_put(KEY, build)
        answer = "returned"
    except Exception as exc:
        answer = f"{type(exc).__name__}: {exc}"
    (Path(root) / f"rank{rank}.txt").write_text(answer)
    torch.distributed.destroy_process_group()


@pytest.mark.distributed
@pytest.mark.parametrize("stage, failing_rank", [("build", 1), ("install", 0)])
def test_a_failure_on_one_rank_stops_every_rank_and_installs_nothing(tmp_path, stage, failing_rank):
    # before, the other rank waited in a barrier for a rank that had already raised: a hang
    torch.multiprocessing.spawn(_failing_worker, args=(distributed.free_port(), str(tmp_path), failing_rank, stage),
                                nprocs=WORLD, join=True)
    own = "ValueError: saving the trained module failed" if stage == "build" else "OSError: disk full"
    for rank in range(WORLD):
        answer = (tmp_path / f"rank{rank}.txt").read_text()
        if rank == failing_rank:
            assert answer == own
        else:
            assert answer.startswith(f"RuntimeError: {stage}ing the store entry {KEY!r} failed on rank(s) "
                                     f"[{failing_rank}]") and own in answer
    assert not (tmp_path / "store" / KEY).exists()


def test_one_rank_keeps_the_plain_locked_path(tmp_path):
    store = AdapterStore(tmp_path / "store")
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}  # a world of one: the value itself
    folder = tmp_path / "built"
    folder.mkdir()
    (folder / CONFIG).write_text("{}")
    (folder / WEIGHTS).write_bytes(b"w")
    assert store.get_or_put(KEY, lambda: folder) == (store.path(KEY), False)
    assert store.get_or_put(KEY, lambda: pytest.fail("must not rebuild")) == (store.path(KEY), True)
