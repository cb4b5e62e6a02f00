"""Losses against hand computations; metrics against known values."""

import math

import numpy as np
import pytest
import torch

from hskcache.targets import LayerTargets
from hsktrain.losses import HSKLoss, hsk_layer_loss, prediction_loss, soft_cross_entropy
from hsktrain.metrics import learned_nothing, main_metric, one_answer_scores, task_metrics


def proj_2_to_4():
    p = torch.nn.Linear(2, 4)
    with torch.no_grad():
        p.weight.copy_(torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [0.0, 0.0]]))
        p.bias.zero_()
    return p


H = torch.tensor([[[1.0, 2.0], [3.0, 4.0], [5.0, 6.0]]])  # (B=1, T=3, h_s=2)
POS = torch.tensor([[2, 0, -1]])  # third row padded: ignored
# projected states at positions 2 and 0: [5, 6, 11, 0] and [1, 2, 3, 0]
VALUES = torch.tensor([[[4.0, 1.0], [1.0, 3.0], [9.0, 9.0]]])  # (1, K=3, W=2)
DIMS = torch.tensor([[[0, 2], [1, 2], [0, 1]]])


def test_hsk_loss_unkept_dims_are_zero_targets():
    # dense targets: [4, 0, 1, 0] and [0, 1, 3, 0]
    diffs = [1, 6, 10, 0] + [1, 1, 0, 0]
    want = sum(d * d for d in diffs) / (2 * 4)
    got = hsk_layer_loss(H, proj_2_to_4(), POS, VALUES, DIMS, 4)
    assert got.item() == pytest.approx(want)


def test_hsk_loss_kept_only():
    # kept dims: token 0 dims (0, 2) -> (5, 11) vs (4, 1); token 1 dims (1, 2) -> (2, 3) vs (1, 3)
    want = (1 + 100 + 1 + 0) / (2 * 2)
    got = hsk_layer_loss(H, proj_2_to_4(), POS, VALUES, DIMS, 4, kept_only=True)
    assert got.item() == pytest.approx(want)


@pytest.mark.parametrize("kept_only", [False, True])
def test_zero_prediction_is_the_loss_of_a_projection_that_outputs_zeros(kept_only):
    # by hand: valid tokens hold 4, 1 and 1, 3: squares 17 + 10 = 27 over 2 tokens x 4 dims (2
    # kept), the full-width layer 1 + 4 + 9 + 16 = 30 over 1 token x 4 dims; weight 0.5
    full = torch.tensor([[[1.0, 2.0, 3.0, 4.0]]])
    layers = [
        LayerTargets(1, 2, POS, VALUES, DIMS),
        LayerTargets(2, 4, torch.tensor([[1]]), full, None),
    ]
    want = 0.5 * (27 / (2 * (2 if kept_only else 4)) + 30 / 4)
    loss = HSKLoss(proj_2_to_4(), 4, weight=0.5, kept_only=kept_only)
    assert loss.zero_prediction(layers).item() == pytest.approx(want)
    zeros = HSKLoss(lambda x: x.new_zeros(*x.shape[:-1], 4), 4, 0.5, kept_only)
    hidden = (H, H, H[:, :2])
    assert zeros(hidden, layers).item() == pytest.approx(want)


def test_hsk_loss_fixed_dims_and_full_width():
    fixed = torch.tensor([3, 1])
    want = ((0 - 4) ** 2 + (6 - 1) ** 2 + (0 - 1) ** 2 + (2 - 3) ** 2) / 4
    got = hsk_layer_loss(H, proj_2_to_4(), POS, VALUES, fixed, 4, kept_only=True)
    assert got.item() == pytest.approx(want)
    ident = torch.nn.Identity()
    full = hsk_layer_loss(H, ident, POS[:, :2], H[:, [2, 0]], None, 2)
    assert full.item() == 0.0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("kept_only", [False, True])
def test_hsk_loss_widens_16_bit_targets_exactly(dtype, kept_only):
    """A cache's batches carry values as stored; the loss is the float32 targets' to the bit,
    in float32."""
    h = torch.randn(2, 5, 2)
    positions, dims = torch.tensor([[4, 0, -1], [1, 2, 3]]), torch.tensor([[[0, 2]] * 3] * 2)
    stored = torch.randn(2, 3, 2).to(dtype)
    args = (proj_2_to_4(), positions)
    got = hsk_layer_loss(h, *args, stored, dims, 4, kept_only)
    want = hsk_layer_loss(h, *args, stored.float(), dims, 4, kept_only)
    assert got.dtype == torch.float32 and torch.equal(got, want)


def test_soft_ce_temperature_scales_both_sides():
    s, t = torch.tensor([[2 * math.log(3.0), 0.0]]), torch.tensor([[0.0, 2 * math.log(3.0)]])
    # T=1: target softmax([0, 2 ln3]) = [1/10, 9/10]; student log softmax = [ln .9, ln .1]
    t1 = -(0.1 * math.log(0.9) + 0.9 * math.log(0.1))
    # T=2: both halved, target softmax([0, ln3]) = [1/4, 3/4]; student [ln 3/4, ln 1/4]
    t2 = -(0.25 * math.log(0.75) + 0.75 * math.log(0.25))
    assert soft_cross_entropy(s, t).item() == pytest.approx(t1)  # 2.0831
    assert soft_cross_entropy(s, t, 2.0).item() == pytest.approx(t2)  # 1.1117
    assert soft_cross_entropy(s, t, 2.0).item() != pytest.approx(t1)


def test_soft_ce_and_prediction_loss():
    s, t = torch.tensor([[0.0, 0.0]]), torch.tensor([[0.0, math.log(3.0)]])
    assert soft_cross_entropy(s, t).item() == pytest.approx(math.log(2))
    s2 = torch.tensor([[math.log(3.0), 0.0]])
    want = -(0.25 * math.log(0.75) + 0.75 * math.log(0.25))
    assert soft_cross_entropy(s2, t).item() == pytest.approx(want)
    labels = torch.tensor([1])
    hard = prediction_loss(s2, t, labels, 1.0, 0.5, False).item()
    assert hard == pytest.approx(want + 0.5 * -math.log(0.25))
    reg = prediction_loss(
        torch.tensor([[1.0], [3.0]]), None, torch.tensor([2.0, 2.0]), 1.0, 0.0, True
    )
    assert reg.item() == pytest.approx(1.0)


def test_metrics_known_values():
    y, p = np.array([1, 0, 1, 1, 0, 0]), np.array([1, 1, 1, 0, 0, 0])
    m = task_metrics("mrpc", p, y)
    assert m["accuracy"] == pytest.approx(4 / 6) and m["f1"] == pytest.approx(2 / 3)
    # tp=2 tn=2 fp=1 fn=1: mcc = (4 - 1) / sqrt(3*3*3*3) = 1/3
    assert task_metrics("cola", p, y)["matthews"] == pytest.approx(1 / 3)
    s = task_metrics("stsb", np.array([1.0, 2.0, 3.0, 4.0]), np.array([2.0, 4.0, 6.0, 9.0]))
    assert s["spearman"] == pytest.approx(1.0) and 0.98 < s["pearson"] < 1.0
    assert main_metric("cola") == "matthews" and main_metric("sst2") == "accuracy"


def test_one_answer_floor_and_the_warning_under_it():
    """The floor is each metric's best over the classes answered for every row; the warning
    comes at the floor + 1 point or under, not above, and never without a floor."""
    y = np.array([1, 1, 1, 0])
    assert one_answer_scores("mrpc", y) == pytest.approx({"accuracy": 0.75, "f1": 6 / 7})
    assert one_answer_scores("cola", y) == {"accuracy": 0.75, "matthews": 0.0}
    assert one_answer_scores("sst2", 1 - y) == {"accuracy": 0.75}  # the majority is class 0
    assert one_answer_scores("stsb", y.astype(np.float32)) == {}
    assert one_answer_scores("custom", np.array([0.5, 2.0], dtype=np.float32)) == {}
    floor = {"accuracy": 0.75}
    warned = learned_nothing("sst2", {"accuracy": 0.76}, floor)
    assert warned == (
        "dev accuracy 0.7600 is not 1 point above answering one class for every row (0.7500): "
        "it learned no more than the label prior"
    )
    assert learned_nothing("sst2", {"accuracy": 0.70}, floor).startswith("dev accuracy 0.7000")
    assert learned_nothing("sst2", {"accuracy": 0.7601}, floor) is None
    assert learned_nothing("stsb", {"pearson": 0.1}, {}) is None
    assert learned_nothing("cola", {"accuracy": 0.9, "matthews": 0.0}, {"matthews": 0.0})
    # any metric the floor scores clears it: MRPC's accuracy over the majority with F1 under
    # always "equivalent" is learning; neither, and both are named, the main one first
    floor = {"accuracy": 0.684, "f1": 0.812}
    assert learned_nothing("mrpc", {"accuracy": 0.70, "f1": 0.80}, floor) is None
    assert learned_nothing("mrpc", {"accuracy": 0.69, "f1": 0.82}, floor) == (
        "dev f1 0.8200 and accuracy 0.6900 are not 1 point above answering one class for every "
        "row (0.8120, 0.6840): it learned no more than the label prior"
    )


def test_batch_magnitude_threshold_spans_the_batch():
    from hskcache.targets import LayerTargets
    from hsktrain.batch import batch_magnitude

    values = torch.tensor([[[3.0, -1.0, 2.0], [9.0, 9.0, 9.0]], [[0.5, -4.0, 1.0], [0, 0, 0]]])
    pos = torch.tensor([[0, -1], [1, 2]])  # row 0 token 1 is padding: never kept or counted
    out = batch_magnitude(LayerTargets(4, 8, pos, values, None), 1 / 3, 3)
    # 9 valid values: |v| = 3 1 2 .5 4 1 0 0 0; top third (3 values): 4, 3, 2
    assert out.values.tolist() == [
        [[3.0, 0.0, 2.0], [0.0, 0.0, 0.0]],
        [[0.0, -4.0, 0.0], [0.0, 0.0, 0.0]],
    ]
    assert out.dims is None
