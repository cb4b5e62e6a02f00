"""Which of a teacher's hidden channels, attention heads, head dims and FFN neurons carry the most
activation on a calibration sample: the ranking importance-based weight selection keeps.

Prefix selection (students.py) keeps the *first* dims of every tensor, which for a 768-wide
teacher cut to 312 drops 60% of the residual stream at random with respect to what the teacher
uses. Minitron (Muralidharan et al., 2024, "Compact Language Models via Pruning and Knowledge
Distillation") instead ranks each axis by its mean activation magnitude on a small calibration
set and keeps the top ones. Here, on the build's own first rows:

- hidden channels: mean |h| over every valid token of every hidden state (embeddings and each
  layer's output: the residual stream is one set of channels through the whole model);
- heads and the dims inside each head: mean |context| of each dim of the attention output's
  input (the heads' weighted values, before the output projection), a head scored by its dims'
  sum; Q, K and V keep the same dims of a head (their shapes must agree);
- FFN neurons: mean |activation| after the intermediate layer's nonlinearity.

A pure function of (teacher, rows): a resumed build computes the same ranking, so the stored
init is the same bytes.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from hskcache.tokenize import Encoded


@dataclass(frozen=True)
class Ranking:
    """Indices of each axis, most active first (ties: the lower index first)."""

    hidden: torch.Tensor  # (H,)
    heads: tuple[torch.Tensor, ...]  # per layer: (heads,)
    head_dims: tuple[torch.Tensor, ...]  # per layer: (heads, head_dim), per-head dim indices
    neurons: tuple[torch.Tensor, ...]  # per layer: (intermediate,)

    def kept_hidden(self, n: int) -> torch.Tensor:
        """The `n` channels kept, in the teacher's order."""
        return self.hidden[:n].sort().values

    def kept_heads(self, layer: int, n_heads: int, head_dim: int) -> torch.Tensor:
        """Flat (head * d_t + dim) indices of the top `n_heads` heads (in the teacher's order),
        each with its top `head_dim` dims (in order): Q/K/V rows, the output's columns."""
        heads = self.heads[layer][:n_heads].sort().values
        d_t = self.head_dims[layer].shape[1]
        dims = [self.head_dims[layer][h][:head_dim].sort().values + h * d_t for h in heads]
        return torch.cat(dims)

    def kept_neurons(self, layer: int, n: int) -> torch.Tensor:
        return self.neurons[layer][:n].sort().values


def _descending(score: torch.Tensor) -> torch.Tensor:
    return torch.argsort(-score, stable=True)


def _blocks(model: nn.Module) -> list[tuple[nn.Module, nn.Module]]:
    """(attention output projection, intermediate) of every layer, BERT or MPNet layout."""
    out = []
    for layer in model.base_model.encoder.layer:
        attn = layer.attention
        proj = attn.attn.o if hasattr(attn, "attn") else attn.output.dense
        out.append((proj, layer.intermediate))
    return out


@torch.no_grad()
def activation_ranking(model: nn.Module, batches: Iterable[dict[str, torch.Tensor]]) -> Ranking:
    """Rank every axis of `model` by mean activation magnitude over `batches` (dicts of
    input_ids, attention_mask and, for BERT, token_type_ids), padding excluded.

    Args:
        model: the teacher (any `*ForSequenceClassification` of a BERT-style family).
        batches: the calibration rows.
    """
    cfg = model.config
    n_heads, layers = cfg.num_attention_heads, cfg.num_hidden_layers
    hidden = torch.zeros(cfg.hidden_size, dtype=torch.float64)
    context = [torch.zeros(cfg.hidden_size, dtype=torch.float64) for _ in range(layers)]
    ffn = [torch.zeros(cfg.intermediate_size, dtype=torch.float64) for _ in range(layers)]
    mask: list[torch.Tensor] = []  # the current batch's (B, T, 1) valid-token mask

    def summed(x: torch.Tensor) -> torch.Tensor:
        return (x.abs().double() * mask[0]).sum((0, 1)).cpu()

    def keep(sums: list[torch.Tensor], i: int, pre: bool):
        def hook(_module, inputs, output=None):
            sums[i] += summed(inputs[0] if pre else output)

        return hook

    handles = []
    for i, (proj, inter) in enumerate(_blocks(model)):
        handles.append(proj.register_forward_pre_hook(keep(context, i, pre=True)))
        handles.append(inter.register_forward_hook(keep(ffn, i, pre=False)))
    model_was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    try:
        for batch in batches:
            batch = {k: v.to(device) for k, v in batch.items()}
            mask[:] = [batch["attention_mask"].unsqueeze(-1).double()]
            out = model(**batch, output_hidden_states=True)
            for h in out.hidden_states:
                hidden += summed(h)
    finally:
        for h in handles:
            h.remove()
        model.train(model_was_training)
    head_dim = cfg.hidden_size // n_heads
    per_head = [c.view(n_heads, head_dim) for c in context]
    return Ranking(
        hidden=_descending(hidden),
        heads=tuple(_descending(c.sum(1)) for c in per_head),
        head_dims=tuple(torch.stack([_descending(row) for row in c]) for c in per_head),
        neurons=tuple(_descending(f) for f in ffn),
    )


# The first rows of the build (or of a fit's rows, which are the cache's), in batches of a fixed
# size: the sums, and so the ranking, are the same wherever they are computed.
CALIBRATION_ROWS = 256
CALIBRATION_BATCH = 32


def first_rows(source, n: int, fields: list[str] | None = None) -> dict[str, np.ndarray]:
    """The first `n` rows (every row when there are fewer) of a cache or in-memory source
    (anything with `read_chunk`), in stored order: every array, or the named ones."""
    parts, have, i = [], 0, 0
    while have < min(n, source.num_examples):
        parts.append(source.read_chunk(i, fields))
        have, i = have + len(next(iter(parts[-1].values()))), i + 1
    return {f: np.concatenate([p[f] for p in parts])[:n] for f in parts[0]}


def calibration_rows(source, n: int) -> Encoded:
    """The first `n` rows' token inputs: what the ranking runs the teacher on."""
    rows = first_rows(source, n, ["input_ids", "token_type_ids", "lengths"])
    return Encoded(rows["input_ids"], rows["token_type_ids"], rows["lengths"])


def calibration_batches(
    model: nn.Module, enc: Encoded, n: int = CALIBRATION_ROWS
) -> Iterator[dict]:
    """The first `n` encoded rows as model inputs, trimmed to each batch's longest row; token
    type ids only for a family that takes them."""
    from hskcache.teacher import accepts  # lazy: teacher.py imports transformers

    n = min(n, len(enc.lengths))
    for lo in range(0, n, CALIBRATION_BATCH):
        hi = min(n, lo + CALIBRATION_BATCH)
        T = int(enc.lengths[lo:hi].max())
        lengths = torch.from_numpy(enc.lengths[lo:hi].astype("int64"))
        batch = {
            "input_ids": torch.from_numpy(enc.input_ids[lo:hi, :T].astype("int64")),
            "attention_mask": (torch.arange(T)[None, :] < lengths[:, None]).long(),
        }
        if accepts(model, "token_type_ids"):
            batch["token_type_ids"] = torch.from_numpy(
                enc.token_type_ids[lo:hi, :T].astype("int64")
            )
        yield batch
