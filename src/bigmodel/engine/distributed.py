"""Data parallelism through ``torch.distributed``, set up from the variables that torchrun exports.

    torchrun --nproc_per_node=2 -m bigmodel train CONFIG

Without torchrun (no ``WORLD_SIZE`` above 1) every helper here is a no-op on a world of one, so the
loop has a single code path. gloo on the CPU, NCCL on CUDA.
"""

from __future__ import annotations

import gc
import os
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from bigmodel.errors import UserError


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world_from_env() -> World:
    """This process's place in the job, as torchrun describes it (one process when it does not)."""
    try:
        return World(
            int(os.environ.get("RANK", 0)),
            int(os.environ.get("WORLD_SIZE", 1)),
            int(os.environ.get("LOCAL_RANK", 0)),
        )
    except ValueError:
        raise UserError("RANK, WORLD_SIZE and LOCAL_RANK must be integers (torchrun sets them)") from None


def init_world(world: World, device: torch.device, timeout_s: float = 600.0) -> torch.device:
    """Join the process group; on CUDA each process takes the GPU of its local rank."""
    if not world.distributed or dist.is_initialized():
        return device
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    # The timeout turns a rank stuck in a collective (its peer died) into an error instead of a hang.
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", timeout=timedelta(seconds=timeout_s))
    return device


def leave_together() -> None:
    """Wait until every rank is here (rank 0 has written its report), so that no rank tears down the
    process group while another still runs; only on success, since a failed rank may be mid-collective."""
    if dist.is_initialized():
        dist.barrier()


def close_world() -> None:
    """Leave the process group. Call it after dropping the DDP model: its reducer, freed later with the
    group already gone, would destroy the group from a destructor that holds the GIL while gloo's
    threads wait for it (a deadlock seen here at exit)."""
    if dist.is_initialized():
        gc.collect()  # the DDP wrapper sits in reference cycles: free it while the group still exists
        dist.destroy_process_group()


def sum_across(values: torch.Tensor) -> torch.Tensor:
    """Element-wise sum over ranks (a copy; float64 or int64 keeps the totals exact)."""
    if not dist.is_initialized():
        return values.clone()
    nccl = dist.get_backend() == "nccl"  # NCCL reduces only tensors on the GPU
    out = values.to(torch.device("cuda", torch.cuda.current_device()) if nccl else values.device, copy=True)
    dist.all_reduce(out)
    return out.to(values.device)


def any_rank(flag: bool) -> bool:
    """True when ``flag`` is true on some rank: every rank then takes the same branch."""
    if not dist.is_initialized():
        return flag
    return bool(sum_across(torch.tensor([int(flag)]))[0] > 0)


def gather_objects(obj: Any) -> list[Any]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not dist.is_initialized():
        return [obj]
    out: list[Any] = [None] * dist.get_world_size()
    dist.all_gather_object(out, obj)
    return out


def is_peer_failure(exc: BaseException) -> bool:
    """Whether ``exc`` is a collective failing because another rank died or hung (gloo and NCCL raise
    plain RuntimeErrors that say so)."""
    if isinstance(exc, dist.DistError):
        return True
    signs = ("gloo", "NCCL", "Connection reset by peer", "Connection closed by peer", "Timed out")
    return isinstance(exc, RuntimeError) and dist.is_initialized() and any(s in str(exc) for s in signs)
