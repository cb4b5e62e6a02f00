"""The projection's inits: `fitted` solves the least-squares map to the run's own HSK targets."""

from __future__ import annotations

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from hskcache.errors import ConfigError
from hskcache.selection import gather_tokens
from hskcache.targets import Batch, LayerTargets
from hsktrain.config import FitConfig
from hsktrain.losses import HSKLoss
from hsktrain.projection import fit_projection, make_projection
from hsktrain.train import fit

H_T = 48  # the made-up teacher's width (the student is 32 wide)


@pytest.fixture(scope="module")
def student(tiny_bert):
    torch.manual_seed(0)
    return AutoModelForSequenceClassification.from_pretrained(tiny_bert)  # hidden 32


def batch(model, layers) -> Batch:
    """Six rows of random ids, variable lengths, no targets yet."""
    g = torch.Generator().manual_seed(1)
    ids = torch.randint(5, model.config.vocab_size, (6, 9), generator=g)
    lengths = torch.tensor([9, 7, 9, 4, 8, 6])
    mask = (torch.arange(9)[None] < lengths[:, None]).long()
    return Batch(ids, mask, torch.zeros_like(ids), torch.zeros(6, dtype=torch.long), None, layers)


def hidden(model, b: Batch) -> tuple[torch.Tensor, ...]:
    model.eval()
    with torch.no_grad():
        return model(**b.model_inputs(model), output_hidden_states=True).hidden_states


def loss_vs_zero(model, proj, b: Batch) -> float:
    """The HSK loss with `proj` over an all-zero prediction's, as fit computes both."""
    hs = hidden(model, b)
    with torch.no_grad():
        zero = HSKLoss(lambda x: x.new_zeros(*x.shape[:-1], H_T), H_T)(hs, b.layers)
        return float(HSKLoss(proj, H_T)(hs, b.layers) / zero)


def test_fitted_recovers_an_exact_linear_map(student):
    """Targets that are a linear map of the student's states (two layers, every token) are fit
    exactly: the solved map predicts them (its weights may differ along the direction LayerNorm
    leaves constant), the loss left is 0; the global RNG and the model's mode are untouched."""
    b = batch(student, [])
    positions = torch.where(b.attention_mask.bool(), torch.arange(9), -1)
    hs = hidden(student, b)
    g = torch.Generator().manual_seed(2)
    a, bias = torch.randn(H_T, 32, generator=g), torch.randn(H_T, generator=g)
    for layer in (1, 2):
        x = gather_tokens(hs[layer], positions)
        b.layers.append(LayerTargets(layer, layer, positions, x @ a.T + bias, None))
    student.train()
    start, rng = make_projection(32, H_T, "select"), torch.get_rng_state()
    fitted = fit_projection(student, start, [b], H_T)
    assert student.training  # put back as it was
    assert torch.equal(torch.get_rng_state(), rng)  # a fit's seeded stream is left alone
    assert (fitted.rows, fitted.pairs) == (6, 2 * int(b.attention_mask.sum()))
    assert fitted.after < 1e-6 < fitted.before
    with torch.no_grad():
        for la in b.layers:
            x = gather_tokens(hs[la.student], positions)[positions >= 0]
            y = la.values[positions >= 0]
            assert (fitted.proj(x) - y).abs().max() < 0.01 * y.abs().max()


def test_fitted_minimises_the_loss_fit_trains(student):
    """Sparse targets (3 tokens x 4 kept dims a row, the rest 0, as a cache stores them): the
    reported ratios are the HSK loss's own, and the solved map is its minimum (zero gradient)."""
    b = batch(student, [])
    g = torch.Generator().manual_seed(3)
    positions = torch.tensor([[0, 2, 5], [1, 3, -1], [0, 1, 2], [3, -1, -1], [4, 5, 6], [0, 1, 5]])
    dims = torch.stack([torch.randperm(H_T, generator=g)[:4] for _ in range(18)]).view(6, 3, 4)
    b.layers.append(LayerTargets(1, 2, positions, torch.randn(6, 3, 4, generator=g), dims))
    start = make_projection(32, H_T, "select", [i for i in range(H_T) if i % 3])
    fitted = fit_projection(student, start, [b], H_T)
    assert fitted.pairs == int((positions >= 0).sum())
    assert fitted.before == pytest.approx(loss_vs_zero(student, start, b), rel=1e-5)
    # the solved map leaves float32 noise (~1e-7 of the zero loss): compared on `before`'s scale
    after = loss_vs_zero(student, fitted.proj, b)
    assert fitted.after == pytest.approx(after, rel=1e-4, abs=1e-5 * fitted.before)
    assert fitted.after < fitted.before
    proj = fitted.proj
    loss = HSKLoss(proj, H_T)(hidden(student, b), b.layers)
    grad = torch.autograd.grad(loss, [proj.weight, proj.bias])
    assert max(float(t.abs().max()) for t in grad) < 1e-4  # the ridge is all that is left


def test_fitted_needs_targets(student):
    with pytest.raises(ConfigError, match="hold no HSK target"):
        fit_projection(student, make_projection(32, H_T, "select"), [batch(student, [])], H_T)


def test_fit_with_a_fitted_projection(fit_world, tmp_path):
    """`fit --proj-init fitted` solves on the cache's first rows (all 48 here) and records what
    it solved; a prediction-only run trains no projection and fits none; --kept-only refuses."""
    kw = dict(cache=str(fit_world["cache"]), student="tiny", batch_size=8, chunk_rows=8)
    out = tmp_path / "fitted"
    fit(FitConfig(out=str(out), mode="hsk", max_steps=1, proj_init="fitted", **kw), False)
    record = json.loads((out / "config.json").read_text())["student_init"]["projection"]
    assert record["fitted_on_rows"] == 48
    assert record["loss_vs_zero_after"] < record["loss_vs_zero_before"]
    out = tmp_path / "pred"
    fit(FitConfig(out=str(out), mode="pred", max_steps=1, proj_init="fitted", **kw), False)
    assert "projection" not in json.loads((out / "config.json").read_text())["student_init"]
    with pytest.raises(ConfigError, match="--kept-only compares the kept dims only"):
        fit(FitConfig(out=str(tmp_path / "k"), proj_init="fitted", kept_only=True, **kw), False)
