"""The few torch.distributed helpers training and integration need when a script is launched with torchrun.

``torchrun --nproc_per_node=N script.py`` starts N copies of the script with ``WORLD_SIZE``,
``RANK`` and ``LOCAL_RANK`` in their environment. :func:`init` joins them into one process group
(gloo on the CPU, NCCL on CUDA with one GPU per process, ``cuda:LOCAL_RANK``); the other
helpers are no-ops in a single process, so the same code runs either way.
"""

from __future__ import annotations

import atexit
import logging
import os

import numpy as np
import torch
import torch.distributed as dist

logger = logging.getLogger(__name__)


def launched() -> bool:
    """Whether this process is one of several started by torchrun (``WORLD_SIZE`` > 1)."""
    return "RANK" in os.environ and int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: torch.device) -> torch.device:
    """Join the torchrun process group (once per process) and return this process's device.

    Outside torchrun this returns ``device`` unchanged. Under torchrun on CUDA each process
    uses ``cuda:LOCAL_RANK``; the backend is NCCL on CUDA and gloo on the CPU. A group the
    caller initialised already is used as it is.
    """
    if not launched():
        return device
    if not dist.is_available():
        raise RuntimeError("launched with WORLD_SIZE > 1, but this torch build has no torch.distributed support")
    if device.type == "cuda":
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if local_rank >= torch.cuda.device_count():
            raise RuntimeError(
                f"LOCAL_RANK={local_rank} but this node has {torch.cuda.device_count()} CUDA device(s); "
                "launch at most one process per GPU (torchrun --nproc_per_node)"
            )
        if device.index is not None and device.index != local_rank:
            logger.warning("under torchrun each process uses cuda:LOCAL_RANK; using cuda:%d instead of %s", local_rank, device)
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
        atexit.register(_destroy)
        logger.info("joined process group: rank %d of %d on %s", rank(), world_size(), device)
    return device


def _destroy() -> None:
    """Leave the process group at exit, after every rank has got here.

    Without the barrier a rank that finishes first tears its gloo connections down while a peer
    still holds them open, and the peer can abort ("terminate called without an active exception").
    """
    if dist.is_available() and dist.is_initialized():
        try:
            barrier()
        finally:
            dist.destroy_process_group()


def rank() -> int:
    """This process's rank (0 outside a process group)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def world_size() -> int:
    """The number of processes (1 outside a process group)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def is_main() -> bool:
    """Whether this is rank 0, the process that logs and writes files."""
    return rank() == 0


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over all processes, in place, and return it (with NCCL it must be on this rank's GPU)."""
    if world_size() > 1:
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def all_reduce_max(value: float) -> float:
    """The largest of ``value`` over all processes."""
    if world_size() > 1:
        t = torch.tensor([value], dtype=torch.float64, device=_collective_device())
        dist.all_reduce(t, op=dist.ReduceOp.MAX)
        return float(t)
    return value


def all_gather_array(array: np.ndarray) -> np.ndarray:
    """Every process's 1-D ``array``, concatenated in rank order (on every process)."""
    if world_size() == 1:
        return array
    parts: list = [None] * world_size()
    dist.all_gather_object(parts, np.asarray(array))
    return np.concatenate(parts)


def data_parallel(module: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """``module`` wrapped in DistributedDataParallel (gradients averaged over the processes),
    on this process's GPU under NCCL; the module itself outside a process group."""
    if world_size() == 1:
        return module
    return torch.nn.parallel.DistributedDataParallel(module, device_ids=[device.index] if device.type == "cuda" else None)


def _collective_device() -> torch.device:
    return torch.device("cuda", torch.cuda.current_device()) if dist.get_backend() == "nccl" else torch.device("cpu")


def barrier() -> None:
    """Wait until every process gets here."""
    if world_size() > 1:
        if dist.get_backend() == "nccl":  # NCCL needs to know this rank's GPU
            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


__all__ = ["launched", "init", "rank", "world_size", "is_main", "data_parallel", "all_reduce_sum", "all_reduce_max",
           "all_gather_array", "barrier"]
