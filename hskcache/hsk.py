"""HSK configs by name and the depth mapping: what a selection keeps, decided without tensors.

`1l_10t_0.1h` = 1 layer x 10 tokens x 10% width; `full` keeps everything. The command configs
(`hskcache build`, `derive`, `hsktrain fit`) and the study grid resolve names here, so they and
their `--help` need no torch; `selection.py` does the selecting on tensors.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field

from hskcache.errors import ConfigError

LENGTH_STRATEGIES = ("left", "attention", "attention-no-sep")
WIDTH_STRATEGIES = ("random", "uniform", "magnitude")
SCORE_LAYERS = ("producing", "uniform")

_NAME = re.compile(r"^(\d+)l_(\d+)t_(\d*\.?\d+)h$")


def hsk_name(
    layers: int | None,
    tokens: int | None,
    width: float,
    all_layers: int | None = None,
    all_tokens: int | None = None,
) -> str:
    """A selection's name, `{L}l_{K}t_{p}h`, or `full` when it keeps every layer and token
    (None, or the counts given as `all_*`) at full width: the one spelling tables, cache
    manifests and study arms share."""
    every_layer = layers is None or layers == all_layers
    every_token = tokens is None or tokens == all_tokens
    if every_layer and every_token and width == 1:
        return "full"
    return f"{layers}l_{tokens}t_{width:g}h"


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
        return hsk_name(self.layers, self.tokens, self.width)

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
        return _distinct(list(zip(range(n_student + 1 - len(ts), n_student + 1), ts, strict=True)))
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
    return _distinct([(s, teacher_layer_for(s, n_student, l_top)) for s in students])


def _distinct(pairs: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Refuse two student states paired with one teacher state: a cache stores each teacher
    state once, as the target of one student state (a student deeper than `l_top` maps two)."""
    for (s1, t1), (s2, t2) in zip(pairs, pairs[1:], strict=False):
        if t1 == t2:
            raise ConfigError(
                f"student states {s1} and {s2} both pair with teacher state {t1}; a cache "
                "stores each teacher state for one student state: raise l_top, keep fewer "
                "layers (the 'l' in the HSK config) or use a shallower student"
            )
    return pairs


def width_count(hidden_size: int, fraction: float, strategy: str) -> int:
    """W, the dims kept per token: `uniform` keeps int(p * h) (the official code's mask, which
    truncates: 768 x 0.1 -> 76), the others round(p * h) (768 x 0.1 -> 77); at least 1.

    Every place that sizes a width (manifest `width_kept`, cache arrays, online targets) goes
    through here, so the count always equals the number of dims actually selected.
    """
    if strategy == "uniform":
        return max(1, int(hidden_size * fraction))
    return max(1, round(fraction * hidden_size))
