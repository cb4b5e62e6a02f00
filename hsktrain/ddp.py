"""Data-parallel `fit` under torchrun: the model wrapped in DDP, each rank's device, and a
rank that stopped reported as one line. The process group itself (`World`, `start`) is
`hskcache.distributed`'s, shared with a sharded build.

`torchrun --nproc-per-node M -m hsktrain.cli fit ...` sets RANK / WORLD_SIZE / LOCAL_RANK; a
plain `hsktrain fit` sets none and runs as rank 0 of 1 with no process group.
"""

from __future__ import annotations

import re

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from hskcache.distributed import World
from hskcache.errors import HskError


def wrap(w: World, net: nn.Module, device: str) -> nn.Module:
    """DDP around `net` when there are several ranks; `net` itself otherwise."""
    if w.world == 1:
        return net
    ids = [w.local_rank] if torch.device(device).type == "cuda" else None
    # find_unused_parameters: the HSK stage leaves the classifier, the pooler and the layers
    # above the top distilled one without gradients, and the prediction stages the projection.
    return DistributedDataParallel(net, device_ids=ids, find_unused_parameters=True)


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


def rank_device(device: str, w: World) -> str:
    """`cuda` means this rank's own GPU under torchrun (cuda:LOCAL_RANK)."""
    if w.world > 1 and device == "cuda":
        return f"cuda:{w.local_rank}"
    return device
