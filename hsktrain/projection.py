"""The student -> teacher width map the HSK loss trains through (TinyBERT's `fit_dense`): how it
starts (`select`: the transpose of weight selection; `random`; `fitted`: least squares on a
calibration sample of the run's own targets), and the one a general student saved beside its
weights.

Why `fitted`: a student selected from a wide teacher keeps a fraction of its channels, and the
`select` map puts each kept channel back where it came from and predicts 0 for every other one.
The dropped channels are correlated with the kept ones, so the best linear map from the
student's initial states to the targets predicts much of them too; solving for it once, before
the first step, starts the HSK stage from that map instead of learning it from scratch.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import torch
from safetensors.torch import load
from torch import nn

from hskcache.errors import ConfigError
from hskcache.selection import gather_tokens, scatter_width
from hskcache.targets import Batch
from hsktrain.config import PROJ_INITS

RIDGE = 1e-4  # x the mean diagonal of X^T X: keeps the solve well posed, changes no fit measurably


def projection_for(
    model: nn.Module, init_info: dict, teacher_width: int, init: str, seed: int, teacher_dims: bool
) -> nn.Module:
    """The projection a fit with this student and seed starts from (the same however its targets
    are made); `teacher_dims`: the targets are the teacher's, so the student's kept channels
    (`init_info["hidden_dims"]`) name teacher channels. `fitted` starts here as `select` does:
    `fit_projection` then solves for its weights."""
    with torch.random.fork_rng():
        torch.manual_seed(seed + 1)
        dims = init_info.get("hidden_dims") if teacher_dims else None
        return make_projection(model.config.hidden_size, teacher_width, init, dims)


def make_projection(
    h_s: int, h_t: int, init: str, hidden_dims: list[int] | None = None
) -> nn.Module:
    """Student -> teacher width map shared by all distilled layers (TinyBERT's fit_dense).

    `select` starts as the transpose of weight selection (student dim i -> the teacher channel
    it was selected from: `hidden_dims[i]`, or i for a prefix selection), which is what a
    selected student's states already mean; `random` is nn.Linear's default; `fitted` starts as
    `select` but is always a Linear (its solve may move any weight).
    """
    if init not in PROJ_INITS:
        raise ConfigError(f"unknown projection init '{init}'; use one of {PROJ_INITS}")
    if h_s == h_t and init == "select" and hidden_dims in (None, list(range(h_s))):
        return nn.Identity()
    proj = nn.Linear(h_s, h_t)
    if init in ("select", "fitted"):
        dims = torch.arange(h_s) if hidden_dims is None else torch.tensor(hidden_dims)
        with torch.no_grad():
            proj.weight.zero_()
            proj.weight[dims, torch.arange(h_s)] = 1.0
            proj.bias.zero_()
    return proj


@dataclass
class Fitted:
    """What `fit_projection` solved: the map, and the HSK loss it and the map it started from
    score on the calibration rows, each as a fraction of an all-zero prediction's loss (the
    student's states in eval mode: no dropout)."""

    proj: nn.Linear
    rows: int
    pairs: int  # (token, layer) target vectors the solve saw
    before: float
    after: float

    def record(self) -> dict:
        """What a run's config records about its projection."""
        return {
            "fitted_on_rows": self.rows,
            "loss_vs_zero_before": round(self.before, 4),
            "loss_vs_zero_after": round(self.after, 4),
        }


@torch.no_grad()
def fit_projection(
    model: nn.Module, start: nn.Module, batches: Iterable[Batch], teacher_width: int
) -> Fitted:
    """The least-squares projection (with bias) from the student's hidden states to its HSK
    targets, over every stored (token, layer) pair of `batches`: the map that minimises the HSK
    loss (unkept dims as targets of 0, as the loss compares them) for the student as it is now.

    Accumulates X^T X and X^T Y in float64 (memory independent of the rows), then one solve with
    a small ridge. `start` is the projection it replaces, scored on the same rows. The model is
    put back in the mode it was in.

    Raises:
        ConfigError: the batches hold no HSK target (labels-only rows, or none).
    """
    was_training = model.training
    model.eval()
    h_s = model.config.hidden_size
    xtx = torch.zeros(h_s + 1, h_s + 1, dtype=torch.float64)
    xty = torch.zeros(h_s + 1, teacher_width, dtype=torch.float64)
    yty = torch.zeros((), dtype=torch.float64)
    start_sq = torch.zeros((), dtype=torch.float64)
    rows = pairs = 0
    start = start.to(next(model.parameters()).device)
    try:
        for b in batches:
            hidden = model(**b.model_inputs(model), output_hidden_states=True).hidden_states
            rows += len(b.input_ids)
            for la in b.layers:
                valid = la.positions >= 0
                x = gather_tokens(hidden[la.student], la.positions)[valid]  # (N, h_s)
                y = (
                    la.values
                    if la.dims is None
                    else scatter_width(la.values, la.dims, teacher_width)
                )
                y = y[valid].double().cpu()  # (N, h_t)
                start_sq += ((start(x).double().cpu() - y) ** 2).sum()
                x = torch.cat([x.double().cpu(), torch.ones(len(x), 1, dtype=torch.float64)], 1)
                xtx += x.T @ x
                xty += x.T @ y
                yty += (y**2).sum()
                pairs += len(x)
    finally:
        model.train(was_training)
    if pairs == 0:
        raise ConfigError("--proj-init fitted: the calibration rows hold no HSK target to fit")
    ridge = RIDGE * xtx.diagonal()[:h_s].mean() * torch.eye(h_s + 1, dtype=torch.float64)
    ridge[h_s, h_s] = 0.0  # the bias is not shrunk
    w = torch.linalg.solve(xtx + ridge, xty)  # (h_s + 1, h_t)
    residual = yty - 2 * (w * xty).sum() + (w * (xtx @ w)).sum()  # ||Y - XW||^2
    with torch.random.fork_rng():  # its init is overwritten: leave the caller's RNG alone
        proj = nn.Linear(h_s, teacher_width)
    proj.weight.copy_(w[:h_s].T.float())
    proj.bias.copy_(w[h_s].float())
    zero = float(yty) or 1.0
    return Fitted(proj, rows, pairs, float(start_sq) / zero, float(residual) / zero)


def saved_projection(folder: str, h_s: int, h_t: int) -> nn.Module | None:
    """The projection a checkpoint saved beside its weights (`projection.safetensors`, as `fit`
    writes into best/), when it maps this student's width to this teacher's; else None.

    A general student (`fit --mode hsk` on a task-agnostic cache) learned its states through
    that projection: a task run that starts from it keeps the pair, not the student alone.
    """
    file = Path(folder) / "projection.safetensors"
    if not file.is_file():
        return None
    state = load(file.read_bytes())
    if state.get("weight") is None or tuple(state["weight"].shape) != (h_t, h_s):
        return None
    proj = nn.Linear(h_s, h_t)
    proj.load_state_dict(state)
    return proj
