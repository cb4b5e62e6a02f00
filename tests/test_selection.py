"""Every selection strategy on hand-made tensors, with exact expected indices."""

import pytest
import torch

from hskcache.errors import ConfigError
from hskcache.hsk import (
    SelectionConfig,
    default_l_top,
    depth_pairs,
    parse_hsk,
    teacher_layer_for,
    width_count,
)
from hskcache.selection import (
    PAD_POSITION,
    fixed_width_dims,
    gather_tokens,
    scatter_width,
    scoring_attention_layer,
    select_tokens,
    select_width_magnitude,
)
from hskcache.targets import plan_selection


@pytest.mark.parametrize(
    ("layer", "n_s", "l_top", "want"),
    [
        (1, 4, 6, 2),  # 1.5 -> 2 (even)
        (3, 4, 6, 4),  # 4.5 -> 4 (even)
        (1, 4, 2, 0),  # 0.5 -> 0 (even)
        (3, 4, 2, 2),  # 1.5 -> 2
        (4, 4, 8, 8),
        (2, 6, 8, 3),  # 2.67 -> 3
    ],
)
def test_teacher_layer_rounds_halves_to_even(layer, n_s, l_top, want):
    assert teacher_layer_for(layer, n_s, l_top) == want


def test_depth_pairs_top_layers():
    assert default_l_top(12) == 8 and default_l_top(6) == 4
    assert depth_pairs(4, 12, 1) == [(4, 8)]  # the paper's final choice
    assert depth_pairs(4, 12, 3, l_top=12) == [(2, 6), (3, 9), (4, 12)]
    assert depth_pairs(4, 6, None, l_top=6) == [(0, 0), (1, 2), (2, 3), (3, 4), (4, 6)]
    assert depth_pairs(4, 12, None, teacher_layers=[8, 4]) == [(3, 4), (4, 8)]


@pytest.mark.parametrize(
    ("kwargs", "msg"),
    [
        ({"n_layers": 6}, "hidden states"),
        ({"n_layers": 1, "l_top": 13}, "l_top"),
        ({"n_layers": 1, "teacher_layers": [13]}, "out of range"),
        ({"n_layers": 2, "teacher_layers": [8]}, "listed"),
    ],
)
def test_depth_pairs_errors(kwargs, msg):
    with pytest.raises(ConfigError, match=msg):
        depth_pairs(4, 12, **kwargs)


def test_depth_pairs_refuse_one_teacher_state_twice():
    """A student deeper than l_top would pair two states with one teacher state, which a cache
    (one array per teacher state) cannot hold: refused by name, not a storage error later."""
    with pytest.raises(ConfigError, match="states 1 and 2 both pair with teacher state 1"):
        depth_pairs(6, 6, None, l_top=4)  # 0, 0.67, 1.33, ... -> 0, 1, 1, 2, 3, 3, 4
    with pytest.raises(ConfigError, match="states 3 and 4 both pair with teacher state 8"):
        depth_pairs(4, 12, None, teacher_layers=[8, 8])
    assert depth_pairs(6, 6, 2, l_top=4) == [(5, 3), (6, 4)]  # the top two are distinct


def test_parse_hsk():
    c = parse_hsk("1l_10t_0.1h")
    assert (c.layers, c.tokens, c.width, c.name) == (1, 10, 0.1, "1l_10t_0.1h")
    assert parse_hsk("full").name == "full" and parse_hsk("full").layers is None
    assert parse_hsk("3l_64t_1h").name == "3l_64t_1h"
    for bad in ("1l_10t_0.1", "1l10t0.1h", "0l_10t_0.1h", "1l_10t_1.5h", "1l_0t_0.1h", ""):
        with pytest.raises(ConfigError):
            parse_hsk(bad)
    with pytest.raises(ConfigError, match="length strategy"):
        parse_hsk("full", length="right")


def test_scoring_layer():
    assert scoring_attention_layer(8, 4, 4, 12, "producing") == 7
    assert scoring_attention_layer(0, 0, 4, 12, "producing") == 0
    assert scoring_attention_layer(8, 4, 4, 12, "uniform") == 11  # hidden 12 -> attention 11
    assert scoring_attention_layer(4, 2, 4, 12, "uniform") == 5


MASK = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0]])


def test_left_selection_and_short_rows():
    pos, n = select_tokens(None, MASK, None, 4, "left")
    assert pos.tolist() == [[0, 1, 2, 3], [0, 1, 2, PAD_POSITION]]
    assert n.tolist() == [4, 3]


def test_attention_selection_descending_and_no_padding():
    scores = torch.tensor(
        [[5.0, 1.0, 3.0, 9.0, 2.0, 3.0], [1.0, 7.0, 2.0, 99.0, 98.0, 97.0]]
    )  # padding scores high: ignored
    pos, n = select_tokens(scores, MASK, None, 4, "attention")
    assert pos.tolist() == [[3, 0, 2, 5], [1, 2, 0, PAD_POSITION]]  # tie 2/5 -> lower first
    assert n.tolist() == [4, 3]


def test_attention_no_sep_excludes_every_sep_per_row():
    # row 0: pair with 2 [SEP]s; row 1: single sentence, 1 [SEP], padding;
    # row 2: MPNet-style pair `<s> A </s></s> B </s>` with 3 separators.
    mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0], [1, 1, 1, 1, 1, 1]])
    sep = torch.tensor([[0, 0, 1, 0, 0, 1], [0, 0, 0, 1, 0, 0], [0, 1, 1, 0, 0, 1]]).bool()
    scores = torch.tensor(
        [
            [1.0, 2.0, 50.0, 3.0, 4.0, 60.0],
            [1.0, 2.0, 3.0, 80.0, 0.0, 0.0],
            [9.0, 70.0, 70.0, 1.0, 2.0, 70.0],
        ]
    )
    pos, n = select_tokens(scores, mask, sep, 4, "attention-no-sep")
    assert pos.tolist() == [[4, 3, 1, 0], [2, 1, 0, PAD_POSITION], [0, 4, 3, PAD_POSITION]]
    assert n.tolist() == [4, 3, 3]
    with_sep, _ = select_tokens(scores, mask, sep, 2, "attention")
    assert with_sep.tolist() == [[5, 2], [3, 2], [1, 2]]


def test_selection_pads_when_batch_shorter_than_k():
    pos, n = select_tokens(None, MASK[:, :3], None, 5, "left")
    assert pos.tolist() == [[0, 1, 2, -1, -1], [0, 1, 2, -1, -1]] and n.tolist() == [3, 3]


def test_gather_zeroes_padding():
    h = torch.arange(2 * 3 * 2, dtype=torch.float32).view(2, 3, 2)
    out = gather_tokens(h, torch.tensor([[2, 0], [1, -1]]))
    assert out.tolist() == [[[4, 5], [0, 1]], [[8, 9], [0, 0]]]


def test_magnitude_width_top_k_in_ascending_dims():
    x = torch.tensor([[[0.1, 2.0, -3.0, 0.5, -2.0]]])
    v, d = select_width_magnitude(x, 3)
    assert d.tolist() == [[[1, 2, 4]]]  # the 3 largest |value|, stored in dim order
    assert v.tolist() == [[[2.0, -3.0, -2.0]]]
    dense = scatter_width(v, d, 5)
    assert dense.tolist() == [[[0.0, 2.0, -3.0, 0.0, -2.0]]]
    assert select_width_magnitude(torch.tensor([1.0, -1.0, 1.0]), 2)[1].tolist() == [0, 1]


# The official code's uniform mask: dims round(i / p) for i in 0 .. int(h * p) - 1.
# fmt: off
UNIFORM_MASKS = [
    (768, 0.1, list(range(0, 751, 10))),  # int(76.8) = 76 dims: 0, 10, ..., 750 (not 77)
    (384, 0.1, list(range(0, 371, 10))),  # int(38.4) = 38 dims: 0, 10, ..., 370
    (32, 0.25, [0, 4, 8, 12, 16, 20, 24, 28]),
    (32, 0.3, [0, 3, 7, 10, 13, 17, 20, 23, 27]),  # int(9.6) = 9; 1 / 0.3 = 3.33 -> 3, 6.67 -> 7
    # halves go to even: 2.5 -> 2, 7.5 -> 8, 12.5 -> 12, 17.5 -> 18 (half-up would give 3, 13)
    (20, 0.4, [0, 2, 5, 8, 10, 12, 15, 18]),
    # 100 * 0.29 is 28.999999999999996 in floating point: int() keeps 28 dims, as the paper's
    # code does
    (100, 0.29, [0, 3, 7, 10, 14, 17, 21, 24, 28, 31, 34, 38, 41, 45, 48, 52, 55, 59, 62, 66,
                 69, 72, 76, 79, 83, 86, 90, 93]),
    (10, 0.05, [0]),  # int(0.5) = 0: at least one dim is kept
]
# fmt: on


@pytest.mark.parametrize(("h", "p", "want"), UNIFORM_MASKS)
def test_uniform_width_is_the_official_mask(h, p, want):
    assert fixed_width_dims(h, p, "uniform", 0).tolist() == want
    assert width_count(h, p, "uniform") == len(want)


def test_width_count_per_strategy():
    assert width_count(768, 0.1, "magnitude") == 77 and width_count(768, 0.1, "random") == 77
    assert width_count(768, 0.1, "uniform") == 76
    assert width_count(384, 1.0, "uniform") == 384


@pytest.mark.parametrize("strategy", ["uniform", "random", "magnitude"])
def test_planned_width_matches_the_selected_dims(strategy):
    """The manifest's width_kept, the arrays' width and the dims selected are one number."""
    cfg = SelectionConfig(
        hsk="1l_4t_0.3h",
        length="left",
        width_strategy=strategy,
        seed=0,
        student_layers=4,
        l_top=None,
        teacher_layers=[],
        score_layer="producing",
    )
    plan = plan_selection(cfg, 2, 32, 16)
    assert plan.width == (9 if strategy == "uniform" else 10)
    if strategy != "magnitude":
        assert len(plan.width_dims) == plan.width
    x = torch.randn(1, 1, 32)
    if strategy == "magnitude":
        assert select_width_magnitude(x, plan.width)[0].shape[-1] == plan.width


def test_fixed_width_dims():
    a = fixed_width_dims(384, 0.1, "random", 0)
    assert len(a) == 38 and len(set(a.tolist())) == 38
    assert torch.equal(a, fixed_width_dims(384, 0.1, "random", 0))
    assert not torch.equal(a, fixed_width_dims(384, 0.1, "random", 1))
    assert torch.equal(fixed_width_dims(384, 0.05, "random", 0), a[:19])  # prefix property
    x = torch.randn(2, 3, 384)
    assert torch.equal(scatter_width(x[..., a], a, 384)[..., a], x[..., a])
