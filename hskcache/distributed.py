"""The torchrun process group, shared by a sharded `hskcache build` and a data-parallel
`hsktrain fit`: this process's rank, and the few collectives both need.

torchrun sets RANK / WORLD_SIZE / LOCAL_RANK; a plain command sets none and runs as rank 0 of
1 with no process group, so one-process runs never touch torch.distributed. Backend: nccl when
the ranks train on their GPUs, gloo otherwise (a build's ranks only exchange small objects).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass
class World:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    started: bool = False  # whether this process group was started here (and is ours to end)

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes logs, checkpoints and manifests."""
        return self.rank == 0

    def barrier(self) -> None:
        if self.world > 1:
            dist.barrier()

    def mean(self, t: torch.Tensor) -> float:
        """The mean of a scalar tensor over ranks, as a float (one all-reduce)."""
        if self.world == 1:
            return t.item()
        t = t.detach().float().clone()
        dist.all_reduce(t)
        return t.item() / self.world

    def gather(self, obj):
        """Every rank's `obj`, in rank order (each rank gets the list)."""
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def broadcast(self, obj):
        """Rank 0's `obj` on every rank."""
        if self.world == 1:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def close(self) -> None:
        if self.started and dist.is_initialized():
            dist.destroy_process_group()


def launched_world() -> int:
    """WORLD_SIZE as torchrun set it (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def start(device: str = "cpu") -> World:
    """Join torchrun's process group (when launched by torchrun with more than one process).

    `device` is where this rank computes: on CUDA each rank binds its own GPU (LOCAL_RANK)
    before the group starts, and the group uses nccl.
    """
    world = launched_world()
    if world == 1:
        return World()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.device(device).type == "cuda"
    if cuda:
        torch.cuda.set_device(local)  # before the group: nccl binds each rank to its GPU
    started = not dist.is_initialized()
    if started:
        dist.init_process_group("nccl" if cuda else "gloo")
    return World(rank, world, local, started)
