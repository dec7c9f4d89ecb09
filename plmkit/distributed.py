"""Process-group set-up shared by the trainer and the CLI.

A single process needs the same environment variables a launcher would set (DeepSpeed otherwise
falls back to MPI discovery and fails without ``mpi4py``), so we fill in defaults for a world of one.
"""

from __future__ import annotations

import os
import socket
from typing import Any

import torch

_LAUNCHER_VARS = ("RANK", "LOCAL_RANK", "WORLD_SIZE")


def free_port() -> int:
    """Ask the OS for a free TCP port on loopback."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def launched() -> bool:
    """True when a launcher (``deepspeed``, ``torchrun``) started this process."""
    return all(name in os.environ for name in _LAUNCHER_VARS)


def set_single_process_env() -> None:
    """Fill in the variables a launcher would set, for a world of one process."""
    if launched():
        return
    os.environ.setdefault("RANK", "0")
    os.environ.setdefault("LOCAL_RANK", "0")
    os.environ.setdefault("WORLD_SIZE", "1")
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", str(free_port()))


def rank() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank()
    return int(os.environ.get("RANK", "0"))


def world_size() -> int:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1"))


def is_main_process() -> bool:
    return rank() == 0


def barrier() -> None:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.barrier()


def device() -> torch.device:
    """The device this rank computes on: its local GPU when CUDA is present, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return torch.device("cpu")


def import_deepspeed(enable_cpu_shm_comm: bool = False):
    """Import DeepSpeed quietly and keep it off C++ ops that would need a compile on CPU.

    On a CPU-only machine DeepSpeed's process group builds a shared-memory all-reduce op with a
    one-off ~40 s C++ compile. Gloo gives identical results, so the op is off unless asked for.
    """
    if not torch.cuda.is_available():
        os.environ.setdefault("DS_ACCELERATOR", "cpu")
    import logging

    import deepspeed

    logging.getLogger("DeepSpeed").setLevel(logging.WARNING)
    deepspeed.utils.logger.setLevel(logging.WARNING)
    if not torch.cuda.is_available() and not enable_cpu_shm_comm:
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
    return deepspeed


def init_process_group(enable_cpu_shm_comm: bool = False) -> None:
    """Initialise the (DeepSpeed) process group once per process: gloo on CPU, NCCL on GPU."""
    set_single_process_env()
    deepspeed = import_deepspeed(enable_cpu_shm_comm)
    if torch.distributed.is_initialized() and deepspeed.comm.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(device())
    backend = "nccl" if torch.cuda.is_available() else "gloo"
    deepspeed.init_distributed(dist_backend=backend, verbose=False)


def shutdown() -> None:
    """Tear the process group down before exit.

    Leaving a gloo group alive at interpreter exit can abort the process ("terminate called without
    an active exception") while its worker threads are destroyed, which turns a finished run into a
    crashed one.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return
    torch.distributed.barrier()
    # DeepSpeed's own teardown also drops the groups it cached (data-parallel, ZeRO), so a later job in
    # the same process initialises cleanly instead of meeting a destroyed group.
    import_deepspeed().comm.destroy_process_group()


def broadcast_object(value: Any, src: int = 0) -> Any:
    """Rank ``src``'s ``value`` on every rank (picklable objects); ``value`` itself in a world of one.

    In a launched world of several ranks whose process group is not up yet, this starts it.
    """
    if world_size() == 1:
        return value
    if not torch.distributed.is_initialized():
        init_process_group()
    box = [value]
    torch.distributed.broadcast_object_list(box, src=src)
    return box[0]


def gather_objects(value: Any) -> list[Any]:
    """Every rank's ``value`` on every rank, in rank order (picklable objects); ``[value]`` in a world of one."""
    if world_size() == 1:
        return [value]
    if not torch.distributed.is_initialized():
        init_process_group()
    box: list[Any] = [None] * world_size()
    torch.distributed.all_gather_object(box, value)
    return box


def all_gather(tensor: torch.Tensor) -> torch.Tensor:
    """Concatenate ``tensor`` from every rank along dim 0, in rank order (no gradient); itself in a world of one.

    Every rank must pass a tensor of the same shape. Used for values that only feed targets, such as
    the reference embeddings SCT pushes into its queues, so all ranks keep identical queues.
    """
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()) or world_size() == 1:
        return tensor
    parts = [torch.empty_like(tensor) for _ in range(world_size())]
    torch.distributed.all_gather(parts, tensor.detach().contiguous())
    return torch.cat(parts, dim=0)
