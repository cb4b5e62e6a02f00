"""The caches a study trains from: one plan per selection and rows, grouped into families that
one source cache (the most layers, tokens and width any member keeps) is cut into by `hskcache
derive`. Pure: the sweep's Context builds and derives them."""

from __future__ import annotations

import re
from dataclasses import dataclass

from hskcache.hsk import hsk_name
from hsktrain.study.runs import Arm, Rows


@dataclass(frozen=True)
class CachePlan:
    """One cache a study trains from: its selection, with real strategy names (what `hskcache
    build` takes), and its rows. Frozen, so runs that need the same cache share it and a family
    of caches cut from one source is a dict key; `_build` / `_derive` turn it into the
    command's own selection settings."""

    layers: int
    tokens: int
    width: float
    length: str
    width_strategy: str
    l_top: int
    rows: Rows = Rows()

    def hsk(self, all_layers: int, all_tokens: int) -> str:
        return hsk_name(self.layers, self.tokens, self.width, all_layers, all_tokens)

    @property
    def family(self) -> tuple:
        """Caches one source can be cut into: same rows, token order and depth map; magnitude
        dims from a wider magnitude cache, fixed masks (and full width) from a full-width one."""
        per_token = self.width_strategy == "magnitude" and self.width < 1
        return (self.length, "magnitude" if per_token else "fixed", self.l_top, self.rows)


def cache_plan(arm: Arm) -> CachePlan:
    """The arm's cache selection. An online (per-batch threshold) arm trains without a cache;
    its selection is its per-token magnitude twin's, whose cache gives the run's rows and HSK
    fraction (both keep the same share of values: top-k per token, or over the batch)."""
    length = "left" if arm.length == "-" else arm.length
    wstrat = "magnitude" if arm.width_strategy == "-" or arm.online else arm.width_strategy
    return CachePlan(arm.layers, arm.tokens, arm.width, length, wstrat, arm.l_top, arm.rows)


# A cache folder's extra rows, as `Context.cache_dir` appends them (`-augment4+labelled8000`)
CACHE_ROWS = re.compile(r"-(augment|labelled)\d+(\+(augment|labelled)\d+)*$")


def plain_cache_name(name: str) -> str:
    """A cache folder's name (`Context.cache_dir`) less its extra rows: the selection its
    variants share (`full-left-magnitude-l_top8-augment4` -> `full-left-magnitude-l_top8`)."""
    return CACHE_ROWS.sub("", name)


def family_source(members: list[CachePlan]) -> CachePlan:
    """The one cache a family is cut from: the most layers, tokens and width any member keeps
    (full width for fixed masks: a subset of every mask)."""
    m0 = members[0]
    per_token = m0.family[1] == "magnitude"
    width = max(m.width for m in members) if per_token else 1.0
    return CachePlan(
        max(m.layers for m in members),
        max(m.tokens for m in members),
        width,
        m0.length,
        "magnitude",
        m0.l_top,
        m0.rows,
    )
