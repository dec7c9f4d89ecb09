"""The source store under two ranks (gloo, CPU): rank 0 decides for every rank whether to train or reuse.

In a job launched with several ranks all of them train a missing source together, so they must all
take the same branch. Each rank looking the key up for itself could split them when another job
installs the entry in between (one rank trains and waits in a collective, the other returns); here
rank 1 is made to see such an entry early, and must follow rank 0 anyway.
"""

from __future__ import annotations

import json
import os
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


def test_one_rank_keeps_the_plain_locked_path(tmp_path):
    store = AdapterStore(tmp_path / "store")
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}  # a world of one: the value itself
    folder = tmp_path / "built"
    folder.mkdir()
    (folder / CONFIG).write_text("{}")
    (folder / WEIGHTS).write_bytes(b"w")
    assert store.get_or_put(KEY, lambda: folder) == (store.path(KEY), False)
    assert store.get_or_put(KEY, lambda: pytest.fail("must not rebuild")) == (store.path(KEY), True)
