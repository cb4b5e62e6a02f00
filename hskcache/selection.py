"""Which slice of the teacher's hidden-state knowledge (HSK) to keep: depth, length, width.

Pure functions on tensors, shared by `hskcache build` and the online trainer, so offline and
online distillation select exactly the same targets. Paper: Liu et al., ACL 2021, section 3.

Indices: hidden state 0 is the embedding output; a teacher with L layers has L+1 hidden states.
Tokens are returned in descending score order, so fewer tokens are a prefix of more; magnitude
dims in ascending dim order, ranked by |value| as stored (float16 or bfloat16), so a narrower
width is re-ranked exactly from a wider one's stored values (what `hskcache derive` relies on).
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

import torch

from hskcache.errors import ConfigError

LENGTH_STRATEGIES = ("left", "attention", "attention-no-sep")
WIDTH_STRATEGIES = ("random", "uniform", "magnitude")
SCORE_LAYERS = ("producing", "uniform")
PAD_POSITION = -1  # fills position lists of examples shorter than K

_NAME = re.compile(r"^(\d+)l_(\d+)t_(\d*\.?\d+)h$")


@dataclass(frozen=True)
class HskConfig:
    """A selection: `layers` x `tokens` x `width` (fraction); None means "all" (the `full` HSK)."""

    layers: int | None
    tokens: int | None
    width: float
    length: str = "attention-no-sep"
    width_strategy: str = "magnitude"
    seed: int = 0  # for the random width mask

    @property
    def name(self) -> str:
        if self.layers is None and self.tokens is None and self.width == 1.0:
            return "full"
        return f"{self.layers}l_{self.tokens}t_{self.width:g}h"

    def to_dict(self) -> dict:
        return {"name": self.name, **asdict(self)}


@dataclass
class SelectionConfig:
    """The selection settings of a build, a derive or an online fit, in one place.

    `plan_selection` resolves it against a teacher's shape. The command configs (`BuildConfig`,
    `FitConfig`) keep these as flat fields, so a TOML key, a CLI flag and a dataclass field stay
    one-to-one (unknown keys and `--help` need no nesting rules), and build this from them.
    """

    hsk: str = "1l_10t_0.1h"
    length: str = "attention-no-sep"
    width_strategy: str = "magnitude"
    score_layer: str = "producing"
    student_layers: int = 4
    l_top: int | None = None  # teacher hidden state paired with the student's top layer
    teacher_layers: list[int] = field(default_factory=list)  # explicit pairs instead of l_top
    seed: int = 0  # for the random width mask

    def parse(self) -> HskConfig:
        """The HSK name parsed with its strategies.

        Raises:
            ConfigError: as `parse_hsk`.
        """
        return parse_hsk(self.hsk, self.length, self.width_strategy, self.seed)


SELECTION_DEFAULTS = SelectionConfig()


def parse_hsk(
    name: str, length: str = "attention-no-sep", width_strategy: str = "magnitude", seed: int = 0
) -> HskConfig:
    """Parse `full` or `{L}l_{K}t_{p}h` (e.g. `1l_10t_0.1h`).

    Raises:
        ConfigError: malformed name, zero counts, width outside (0, 1], unknown strategy.
    """
    if length not in LENGTH_STRATEGIES:
        raise ConfigError(f"unknown length strategy '{length}'; use one of {LENGTH_STRATEGIES}")
    if width_strategy not in WIDTH_STRATEGIES:
        raise ConfigError(
            f"unknown width strategy '{width_strategy}'; use one of {WIDTH_STRATEGIES}"
        )
    if name == "full":
        return HskConfig(None, None, 1.0, length, width_strategy, seed)
    m = _NAME.match(name)
    if m is None:
        raise ConfigError(
            f"bad HSK config '{name}'; expected 'full' or '<layers>l_<tokens>t_<width>h' "
            "such as '1l_10t_0.1h'"
        )
    layers, tokens, width = int(m[1]), int(m[2]), float(m[3])
    if layers < 1 or tokens < 1 or not 0.0 < width <= 1.0:
        raise ConfigError(f"bad HSK config '{name}': need layers >= 1, tokens >= 1, 0 < width <= 1")
    return HskConfig(layers, tokens, width, length, width_strategy, seed)


# --- depth -------------------------------------------------------------------------------


def default_l_top(n_teacher: int) -> int:
    """The paper's final choice scaled to any depth: layer 8 of 12, i.e. two thirds up."""
    return max(1, round(n_teacher * 8 / 12))


def teacher_layer_for(student_layer: int, n_student: int, l_top: int) -> int:
    """g(l) = round(l * L_top / L_s); Python's round sends halves to even (1.5 -> 2, 2.5 -> 2)."""
    return round(student_layer * l_top / n_student)


def depth_pairs(
    n_student: int,
    n_teacher: int,
    n_layers: int | None,
    l_top: int | None = None,
    teacher_layers: list[int] | None = None,
) -> list[tuple[int, int]]:
    """Pair the top `n_layers` student hidden states with teacher hidden states.

    Args:
        n_student: student transformer layers L_s (hidden states 0..L_s).
        n_teacher: teacher transformer layers L (hidden states 0..L).
        n_layers: how many pairs to keep, from the top; None keeps all L_s + 1.
        l_top: teacher hidden state paired with the student's top layer (default: 2/3 up).
        teacher_layers: explicit teacher hidden states, paired in order with the top ones.

    Returns:
        [(student_hidden, teacher_hidden)] in ascending student order.

    Raises:
        ConfigError: counts or indices out of range.
    """
    if teacher_layers:
        if any(not 0 <= t <= n_teacher for t in teacher_layers):
            raise ConfigError(f"teacher layers {teacher_layers} out of range 0..{n_teacher}")
        if n_layers is not None and n_layers != len(teacher_layers):
            raise ConfigError(
                f"{n_layers} layers asked but {len(teacher_layers)} teacher layers listed"
            )
        if len(teacher_layers) > n_student + 1:
            raise ConfigError(f"{len(teacher_layers)} layers but the student has {n_student + 1}")
        ts = sorted(teacher_layers)
        return list(zip(range(n_student + 1 - len(ts), n_student + 1), ts, strict=True))
    l_top = default_l_top(n_teacher) if l_top is None else l_top
    if not 1 <= l_top <= n_teacher:
        raise ConfigError(f"l_top {l_top} out of range 1..{n_teacher} (teacher layers)")
    n_layers = n_student + 1 if n_layers is None else n_layers
    if n_layers > n_student + 1:
        raise ConfigError(
            f"{n_layers} layers asked but a {n_student}-layer student has {n_student + 1} "
            "hidden states; lower the 'l' in the HSK config"
        )
    students = range(n_student + 1 - n_layers, n_student + 1)
    return [(s, teacher_layer_for(s, n_student, l_top)) for s in students]


def scoring_attention_layer(
    teacher_hidden: int, student_layer: int, n_student: int, n_teacher: int, mode: str
) -> int:
    """The teacher attention layer (0-based) whose [CLS] row scores tokens for a hidden state.

    `producing`: the layer that produced hidden state i, i.e. max(i - 1, 0).
    `uniform`: the layer a uniform map of all teacher layers would pair with this student layer
    (the paper's `att_ttop12` for a 12-layer teacher).
    """
    if mode == "producing":
        return max(teacher_hidden - 1, 0)
    if mode == "uniform":
        return max(teacher_layer_for(student_layer, n_student, n_teacher) - 1, 0)
    raise ConfigError(f"unknown score layer mode '{mode}'; use one of {SCORE_LAYERS}")


# --- length ------------------------------------------------------------------------------


def select_tokens(
    scores: torch.Tensor | None,
    attention_mask: torch.Tensor,
    sep_mask: torch.Tensor | None,
    k: int,
    strategy: str,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pick K positions per example, best first; padding (and [SEP] for `-no-sep`) never.

    Args:
        scores: (B, T) head-averaged pre-softmax [CLS]-row scores; unused for `left`.
        attention_mask: (B, T) 1 on real tokens.
        sep_mask: (B, T) True on separator tokens; needed for `attention-no-sep`.
        k: positions to keep.
        strategy: one of LENGTH_STRATEGIES.

    Returns:
        positions (B, K) int64, PAD_POSITION past each row's valid count; n_valid (B,) int64.
    """
    B, T = attention_mask.shape
    selectable = attention_mask.bool()
    if strategy == "left":
        scores = -torch.arange(T, dtype=torch.float32).expand(B, T)
    elif strategy in ("attention", "attention-no-sep"):
        if scores is None:
            raise ConfigError(f"length strategy '{strategy}' needs attention scores")
        if strategy == "attention-no-sep":
            if sep_mask is None:
                raise ConfigError("attention-no-sep needs the separator positions")
            selectable = selectable & ~sep_mask.bool()  # per row: pairs have 2+ [SEP]s
    else:
        raise ConfigError(f"unknown length strategy '{strategy}'; use one of {LENGTH_STRATEGIES}")
    masked = scores.float().masked_fill(~selectable, float("-inf"))
    # Stable sort: ties go to the earlier position, so selection is deterministic everywhere.
    order = torch.sort(masked, dim=1, descending=True, stable=True).indices  # (B, T)
    kk = min(k, T)
    positions = order[:, :kk]
    n_valid = selectable.sum(dim=1).clamp(max=k)
    keep = torch.arange(kk).expand(B, kk) < n_valid[:, None]
    positions = positions.masked_fill(~keep, PAD_POSITION)
    if kk < k:  # batch trimmed shorter than K: pad the list out to its fixed width
        pad = torch.full((B, k - kk), PAD_POSITION, dtype=positions.dtype)
        positions = torch.cat([positions, pad], dim=1)
    return positions, n_valid


def gather_tokens(hidden: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """(B, T, H) states at (B, K) positions -> (B, K, H); padded positions give zeros."""
    valid = positions >= 0
    idx = positions.clamp(min=0)[..., None].expand(-1, -1, hidden.shape[-1])
    return torch.gather(hidden, 1, idx) * valid[..., None].to(hidden.dtype)


# --- width -------------------------------------------------------------------------------


def width_count(hidden_size: int, fraction: float, strategy: str) -> int:
    """W, the dims kept per token: `uniform` keeps int(p * h) (the official code's mask, which
    truncates: 768 x 0.1 -> 76), the others round(p * h) (768 x 0.1 -> 77); at least 1.

    Every place that sizes a width (manifest `width_kept`, cache arrays, online targets) goes
    through here, so the count always equals the number of dims actually selected.
    """
    if strategy == "uniform":
        return max(1, int(hidden_size * fraction))
    return max(1, round(fraction * hidden_size))


def fixed_width_dims(hidden_size: int, fraction: float, strategy: str, seed: int) -> torch.Tensor:
    """One set of dims for a whole cache (`random` or `uniform`), as an int64 (k,) tensor.

    `random` keeps a seeded permutation's prefix (so a narrower cut is again random and a
    subset of a wider one). `uniform` is the paper's official mask: dims round(i / p) for
    i in 0 .. int(h * p) - 1, Python's round (halves to even: 20 x 0.4 -> 0, 2, 5, 8, 10, 12,
    15, 18), so 768 x 0.1 keeps the 76 dims 0, 10, ..., 750.
    """
    k = width_count(hidden_size, fraction, strategy)
    if strategy == "random":
        gen = torch.Generator().manual_seed(seed)
        return torch.randperm(hidden_size, generator=gen)[:k]
    if strategy == "uniform":
        return torch.tensor([round(i / fraction) for i in range(k)], dtype=torch.int64)
    raise ConfigError(f"'{strategy}' is not a fixed width strategy")


# The float each storage dtype keeps: magnitude ranks |value| *after* this rounding, so a cache's
# stored values alone re-rank exactly (`hskcache derive` cuts a narrower width from them).
# int8 caches are quantised from float16-rounded values, so they rank as float16 does.
RANK_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "int8": torch.float16}


def top_k_ascending(x: torch.Tensor, k: int, value_dtype: str = "float16") -> torch.Tensor:
    """Indices of the k largest |x rounded to `value_dtype`'s float| along the last axis, ties
    to the lower index, returned in ascending index order: (..., n) -> (..., k) int64."""
    key = x.to(RANK_DTYPES[value_dtype]).float().abs()  # exact in float32: a stable sort key
    top = torch.sort(key, dim=-1, descending=True, stable=True).indices[..., :k]
    return top.sort(dim=-1).values


def select_width_magnitude(
    x: torch.Tensor, k: int, value_dtype: str = "float16"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Top-k dims by |value| per token: (..., H) -> values (..., k), dims (..., k).

    The paper thresholds |value| over a whole training batch; a cache needs a fixed shape, so
    we keep exactly k per token. The rank uses the value as the cache stores it (`value_dtype`;
    ties to the lower dim) and dims come back in ascending order, the order a cache stores them
    in (as gaps); a narrower width is then re-ranked from the stored values alone.
    """
    dims = top_k_ascending(x, k, value_dtype)
    return torch.gather(x, -1, dims), dims


def scatter_width(values: torch.Tensor, dims: torch.Tensor, hidden_size: int) -> torch.Tensor:
    """Dense (..., H) target with kept dims filled and every other dim 0 (the paper's target).

    `dims` is either per token (same shape as `values`) or one (k,) set for the whole cache.
    """
    out = values.new_zeros(*values.shape[:-1], hidden_size)
    if dims.dim() == 1:
        out[..., dims] = values
        return out
    return out.scatter(-1, dims.long(), values)
