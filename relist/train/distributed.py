"""DistributedDataParallel under ``torchrun``, and the same code path without it.

torchrun starts one process per rank and tells it who it is through environment variables;
everything here reads them, so a script never parses ranks itself, and a plain ``python`` run is
just world size 1 with no process group.  DDP averages gradients; what it does not do, and this
module adds, is keep ranks in lockstep when their data shards have different lengths and share
rank 0's decisions (validation, early stopping) with everyone.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, TypeVar

import torch
import torch.distributed as dist
from pydantic import BaseModel
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from relist.io.config import save_config

T = TypeVar("T")


@dataclass(frozen=True)
class DistEnv:
    """Who this process is; with ``world_size == 1`` every method is a no-op."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    def wrap(self, model: nn.Module) -> nn.Module:
        """The model DDP-wrapped when there are several ranks (its parameters already on ``device``)."""
        if self.world_size == 1:
            return model
        device_ids = [self.device.index] if self.device.type == "cuda" else None
        return DistributedDataParallel(model, device_ids=device_ids)

    def lockstep(self, batches: Iterable[T]) -> Iterator[T]:
        """Yield batches while every rank still has one.

        DDP needs the same number of backward passes on every rank or it hangs; shards of
        different lengths would break that, so all ranks stop when the first one runs out.
        """
        for batch in _with_sentinel(batches):
            if not self._all(batch is not None):
                return
            yield batch

    def sum(self, values: torch.Tensor) -> torch.Tensor:
        """Element-wise sum of ``values`` over ranks."""
        if self.world_size > 1:
            values = values.to(self.device)
            dist.all_reduce(values)
        return values

    def broadcast(self, obj: Any) -> Any:
        """Rank 0's ``obj`` on every rank (a small picklable object, e.g. validation metrics)."""
        if self.world_size == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0, device=self.device)
        return box[0]

    def barrier(self) -> None:
        """Wait for every rank, e.g. until rank 0 has finished writing files the others will read."""
        if self.world_size > 1:
            dist.barrier()

    def _all(self, flag: bool) -> bool:
        if self.world_size == 1:
            return flag
        value = torch.tensor([int(flag)], device=self.device)
        dist.all_reduce(value, op=dist.ReduceOp.MIN)
        return bool(value.item())


def _with_sentinel(batches: Iterable[T]) -> Iterator[T | None]:
    yield from batches
    yield None


def init_from_env(device: Literal["auto", "cpu", "cuda"] = "auto") -> DistEnv:
    """Read WORLD_SIZE/RANK/LOCAL_RANK (set by torchrun) and join the process group once.

    gloo on CPU, nccl on GPU (one GPU per local rank).  Calling it again returns the same answer.
    """
    world_size = int(os.environ.get("WORLD_SIZE", 1))
    rank = int(os.environ.get("RANK", 0))
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise RuntimeError("device 'cuda' was asked for but torch sees no GPU")
    where = torch.device("cuda", local_rank) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(where)
    if world_size > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo", device_id=where if use_cuda else None)
    return DistEnv(rank, world_size, local_rank, where)


def save_on_rank0(out_dir: str | Path, files: Mapping[str, BaseModel],
                  device: Literal["auto", "cpu", "cuda"] = "auto") -> None:
    """Write each config or spec to ``out_dir/<name>`` on rank 0 only, then wait for it on every rank.

    The one way a trainer writes its run's files under torchrun: one writer (ranks writing the same
    file at once can leave it torn), and no rank goes on to read a spec before it exists.
    """
    env = init_from_env(device)
    if env.rank == 0:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        for name, config in files.items():
            save_config(config, Path(out_dir) / name)
    env.barrier()


def shutdown() -> None:
    """Leave the process group together: a rank that tears gloo down while another still talks to it
    can abort ("terminate called without an active exception"), so every rank waits for the others first."""
    if dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()
