"""Data-parallel `fit` under torchrun: the process group, this process's rank, and collectives.

`torchrun --nproc-per-node M -m hsktrain.cli fit ...` sets RANK / WORLD_SIZE / LOCAL_RANK; a
plain `hsktrain fit` sets none and runs as rank 0 of 1 with no process group, so one-process
runs never touch torch.distributed. Backend: nccl on CUDA, gloo on CPU.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from hskcache.errors import HskError


@dataclass
class World:
    rank: int = 0
    world: int = 1
    local_rank: int = 0
    started: bool = False  # whether this process group was started here (and is ours to end)

    @property
    def main(self) -> bool:
        """Rank 0: the one process that writes logs and checkpoints and runs dev evaluation."""
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

    def wrap(self, net: nn.Module, device: str) -> nn.Module:
        """DDP around `net` when there are several ranks; `net` itself otherwise."""
        if self.world == 1:
            return net

        ids = [self.local_rank] if torch.device(device).type == "cuda" else None
        # find_unused_parameters: the HSK stage leaves the classifier, the pooler and the layers
        # above the top distilled one without gradients, and the prediction stages the projection.
        return DistributedDataParallel(net, device_ids=ids, find_unused_parameters=True)

    def close(self) -> None:
        if self.started and dist.is_initialized():
            dist.destroy_process_group()


# What gloo says when a peer process is gone: DDP's gradient all-reduce (inside
# backward) raises a plain RuntimeError with these words, not a torch.distributed.DistError.
PEER_GONE = ("Connection reset by peer", "Connection closed by peer", "Broken pipe")


def peer_failure(e: BaseException, w: World) -> HskError | None:
    """A collective that failed because another rank stopped, as one line (the other rank's
    own output says why); None for any other error, which stays a traceback.

    Measured: `kill -9` of rank 1 mid-step makes rank 0's backward raise `RuntimeError:
    [.../gloo/transport/tcp/pair.cc:537] Read error [127.0.0.1]:PORT: Connection reset by peer.
    This is typically caused by ...`.
    """
    text = str(e)
    if w.world == 1 or not (isinstance(e, dist.DistError) or any(m in text for m in PEER_GONE)):
        return None
    why = re.sub(r"^\[[^\]]*\]\s*", "", text.splitlines()[0] if text else "").split(". ")[0]
    return HskError(
        f"rank {w.rank}: another rank stopped ({why or type(e).__name__}); see its output for "
        "why, then rerun the same command with --resume (last/ holds the last complete "
        "checkpoint)"
    )


def launched_world() -> int:
    """WORLD_SIZE as torchrun set it (1 outside torchrun)."""
    return int(os.environ.get("WORLD_SIZE", "1"))


def start(device: str) -> World:
    """Join torchrun's process group (when launched by torchrun with more than one process)."""
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


def rank_device(device: str, w: World) -> str:
    """`cuda` means this rank's own GPU under torchrun (cuda:LOCAL_RANK)."""
    if w.world > 1 and device == "cuda":
        return f"cuda:{w.local_rank}"
    return device
