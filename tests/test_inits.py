"""Student inits near the teacher: importance-ranked selection (exact rankings on a hand-made
model, the tensors it keeps), full-width layer subsets, which teacher layers are copied, and
the init `hskcache build --select importance` stores (recorded, deterministic, in the identity,
followed by fit's projection)."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load
from test_build import make_cfg

from conftest import make_bert, write_sst2
from hskcache.assets import read_asset
from hskcache.build import build_cache
from hskcache.importance import activation_ranking
from hskcache.reader import open_cache
from hskcache.weight_selection import select_weights, student_config
from hsktrain.projection import make_projection


@pytest.fixture(scope="module")
def marked(tmp_path_factory):
    """A tiny BERT (2 layers, hidden 32, 4 heads of 8, FFN 64) with planted activity: channel 5
    then 9 of the residual stream, head 2 (and its dim 3) of layer 0, neuron 7 of layer 1."""
    from transformers import AutoModelForSequenceClassification

    folder = make_bert(tmp_path_factory.mktemp("marked"), layers=2, hidden=32, heads=4)
    model = AutoModelForSequenceClassification.from_pretrained(folder)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "LayerNorm.weight" in name:  # every state of the stream is a LayerNorm's output
                p.fill_(1.0)
                p[5], p[9] = 50.0, 20.0
        value = model.bert.encoder.layer[0].attention.self.value
        value.weight[2 * 8 : 3 * 8] *= 30  # head 2's values ...
        value.weight[2 * 8 + 3] *= 10  # ... and most of all its dim 3
        model.bert.encoder.layer[1].intermediate.dense.bias[7] = 40.0
    return model


def batches(n: int = 3):
    g = torch.Generator().manual_seed(0)
    for _ in range(n):
        ids = torch.randint(5, 80, (4, 10), generator=g)
        mask = torch.ones(4, 10, dtype=torch.long)
        mask[0, 6:] = 0  # padding is left out of the sums
        yield {"input_ids": ids, "attention_mask": mask, "token_type_ids": torch.zeros_like(ids)}


def test_ranking_finds_the_planted_activity(marked):
    r = activation_ranking(marked, batches())
    assert r.hidden[:2].tolist() == [5, 9]
    assert r.heads[0][0].item() == 2 and r.head_dims[0][2][0].item() == 3
    assert r.neurons[1][0].item() == 7
    assert sorted(r.hidden.tolist()) == list(range(32))  # a permutation of every axis
    assert sorted(r.neurons[0].tolist()) == list(range(64))
    again = activation_ranking(marked, batches())  # a pure function of (model, rows)
    assert torch.equal(again.hidden, r.hidden) and torch.equal(again.neurons[1], r.neurons[1])


def test_selection_keeps_the_ranked_slices(marked):
    from transformers import AutoModelForSequenceClassification

    r = activation_ranking(marked, batches())
    shape = {"num_hidden_layers": 2, "hidden_size": 16, "num_attention_heads": 2}
    shape["intermediate_size"] = 32
    student = AutoModelForSequenceClassification.from_config(
        student_config(marked.config, shape, 2)
    )
    teacher = marked.state_dict()
    layers = select_weights(student, teacher, marked.config, r)
    assert layers == [0, 1]
    hidden = r.kept_hidden(16)
    assert {5, 9} <= set(hidden.tolist()) and hidden.tolist() == sorted(hidden.tolist())
    heads = r.heads[0][:2].sort().values
    assert 2 in heads.tolist()
    rows = torch.cat([torch.arange(8) + 8 * h for h in heads])  # full head dims (8 of 8)
    s = student.state_dict()
    q = "bert.encoder.layer.0.attention.self.query.weight"
    assert torch.equal(s[q], teacher[q][rows][:, hidden])
    inter = "bert.encoder.layer.1.intermediate.dense.weight"
    neurons = r.kept_neurons(1, 32)
    assert 7 in neurons.tolist()
    assert torch.equal(s[inter], teacher[inter][neurons][:, hidden])
    word = "bert.embeddings.word_embeddings.weight"
    assert torch.equal(s[word], teacher[word][:, hidden])  # every vocabulary row


def test_projection_starts_from_the_kept_channels():
    proj = make_projection(3, 6, "select", [1, 4, 5])
    x = torch.tensor([[1.0, 2.0, 3.0]])
    assert proj(x).tolist() == [[0.0, 1.0, 0.0, 0.0, 2.0, 3.0]]
    assert isinstance(make_projection(4, 4, "select", [0, 1, 2, 3]), torch.nn.Identity)


def test_build_stores_the_importance_init(tmp_path, tiny_bert):
    data = write_sst2(tmp_path / "SST-2")
    shape = tmp_path / "small.json"
    fields = {"num_hidden_layers": 4, "hidden_size": 16, "num_attention_heads": 2}
    shape.write_text(json.dumps(fields | {"intermediate_size": 32}))
    kw = dict(student=[str(shape)], hsk="1l_4t_0.25h", student_layers=4)
    teacher = make_bert(tmp_path / "t4", layers=4, hidden=32, heads=4)
    a = build_cache(make_cfg(data, tmp_path / "a", teacher, select="importance", **kw), False)
    b = build_cache(make_cfg(data, tmp_path / "b", teacher, select="importance", **kw), False)
    prefix = build_cache(make_cfg(data, tmp_path / "p", teacher, **kw), False)
    ca, cb, cp = (open_cache(x) for x in (a, b, prefix))
    entry = ca.info.assets.students["small"]
    assert dict(entry.select) == {"by": "importance", "calibration_rows": 26}
    assert len(entry.hidden_dims) == 16 and cp.info.assets.students["small"].hidden_dims is None
    assert ca.info.identity == cb.info.identity != cp.info.identity  # in the identity
    weights = lambda c: read_asset(c, c.info.assets.students["small"].files["model.safetensors"])  # noqa: E731
    assert weights(ca) == weights(cb) != weights(cp)  # deterministic, and not the prefix init
    assert load(weights(ca)).keys() == load(weights(cp)).keys()
    from hsktrain.config import FitConfig
    from hsktrain.prepare import prepare

    run = prepare(FitConfig(cache=str(a), out=str(tmp_path / "run"), student=str(shape)))
    dims = list(entry.hidden_dims)
    assert run.proj.weight[dims, range(16)].tolist() == [1.0] * 16  # student i -> its channel
    assert run.proj.weight.abs().sum().item() == 16


def test_fit_selects_by_importance_exactly_as_the_build(tmp_path):
    """`fit --init-from TEACHER --select importance` ranks on the cache's first rows and keeps
    the very tensors the build stored; a stored init of the other kind is refused by name."""
    from hskcache.errors import ConfigError
    from hsktrain.config import FitConfig
    from hsktrain.prepare import prepare

    data = write_sst2(tmp_path / "SST-2")
    teacher = make_bert(tmp_path / "t", layers=4, hidden=32, heads=4)
    shape = tmp_path / "small.json"
    fields = {"num_hidden_layers": 4, "hidden_size": 16, "num_attention_heads": 2}
    shape.write_text(json.dumps(fields | {"intermediate_size": 32}))
    kw = dict(student=[str(shape)], hsk="1l_4t_0.25h", student_layers=4, select="importance")
    cache = build_cache(make_cfg(data, tmp_path / "c", teacher, **kw), False)
    run = dict(cache=str(cache), student=str(shape), out=str(tmp_path / "run"))
    stored = prepare(FitConfig(**run))
    here = prepare(FitConfig(**run, init_from=str(teacher), select="importance"))
    a, b = stored.model.state_dict(), here.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)  # every tensor, the seeded head included
    assert torch.equal(stored.proj.weight, here.proj.weight)
    prefix = prepare(FitConfig(**run, init_from=str(teacher), select="prefix"))
    q = "bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(prefix.model.state_dict()[q], a[q])
    with pytest.raises(ConfigError, match="init was selected by importance, not prefix"):
        prepare(FitConfig(**run, select="prefix"))


def test_full_width_presets_take_the_teachers_width(tmp_path):
    """`full4`: four of the teacher's layers, every tensor whole (DistilBERT / PKD), stored by
    the build at the teacher's own shape and found again by fit with no teacher around."""
    from hsktrain.config import FitConfig
    from hsktrain.prepare import prepare

    data = write_sst2(tmp_path / "SST-2")
    teacher = make_bert(tmp_path / "t", layers=6, hidden=32, heads=4)
    kw = dict(student=["full4"], hsk="1l_4t_0.25h", student_layers=4)
    cache = open_cache(build_cache(make_cfg(data, tmp_path / "c", teacher, **kw), False))
    entry = cache.info.assets.students["full4"]
    assert dict(entry.shape) == {
        "num_hidden_layers": 4,
        "hidden_size": 32,
        "num_attention_heads": 4,
        "intermediate_size": 64,
    }
    assert entry.teacher_layers == (0, 1, 2, 3)  # a full-width subset's default: the bottom
    run = prepare(FitConfig(cache=cache.url, student="full4", out=str(tmp_path / "run")))
    from transformers import AutoModelForSequenceClassification

    full = AutoModelForSequenceClassification.from_pretrained(teacher).state_dict()
    s = run.model.state_dict()
    for i, t in enumerate((0, 1, 2, 3)):  # each kept layer is the teacher's, whole
        key = "bert.encoder.layer.{}.intermediate.dense.weight"
        assert torch.equal(s[key.format(i)], full[key.format(t)])
    assert isinstance(run.proj, torch.nn.Identity)  # same width: no projection to learn


def test_the_default_student_is_full4_from_the_bottom_layers(tmp_path):
    """Naming no student, the build stores fit's default (full4, the teacher's bottom layers)
    and fit trains it; from a teacher folder fit selects the same layers. A narrower shape
    keeps evenly spaced layers by default."""
    from hskcache.shapes import DEFAULT_STUDENT, default_layer_choice
    from hsktrain.config import FitConfig
    from hsktrain.prepare import prepare

    assert DEFAULT_STUDENT == "full4" and default_layer_choice("full4") == "bottom"
    assert default_layer_choice("tinybert4") == default_layer_choice({"hidden_size": 8}) == "even"
    data = write_sst2(tmp_path / "SST-2")
    teacher = make_bert(tmp_path / "t", layers=6, hidden=32, heads=4)
    kw = dict(hsk="1l_4t_0.25h", student_layers=4)
    cache = open_cache(build_cache(make_cfg(data, tmp_path / "c", teacher, **kw), False))
    assert list(cache.info.assets.students) == ["full4"]
    assert cache.info.assets.students["full4"].teacher_layers == (0, 1, 2, 3)
    for init_from in (None, str(teacher)):
        cfg = FitConfig(cache=cache.url, init_from=init_from, out=str(tmp_path / "run"))
        run = prepare(cfg)
        assert (run.model.config.num_hidden_layers, run.model.config.hidden_size) == (4, 32)
        assert run.record["student_init"]["teacher_layers"] == [0, 1, 2, 3]
    narrow = {"num_hidden_layers": 4, "hidden_size": 16, "num_attention_heads": 2}
    run = prepare(
        FitConfig(cache=cache.url, init_from=str(teacher), student=narrow, out=str(tmp_path / "n"))
    )
    assert run.record["student_init"]["teacher_layers"] == [0, 2, 3, 5]


def test_layer_choices():
    from hskcache.weight_selection import layer_subset

    assert layer_subset(12, 4) == [0, 4, 7, 11]  # even: first and last included
    assert layer_subset(12, 4, "bottom") == [0, 1, 2, 3]  # PKD
    assert layer_subset(12, 4, "mapped", 8) == [1, 3, 5, 7]  # targets at states 2, 4, 6, 8
    assert layer_subset(6, 4, "mapped", 4) == [0, 1, 2, 3]


def test_layer_choice_is_stored_and_checked(tmp_path):
    from hskcache.errors import ConfigError
    from hsktrain.config import FitConfig
    from hsktrain.prepare import prepare

    data = write_sst2(tmp_path / "SST-2")
    teacher = make_bert(tmp_path / "t", layers=6, hidden=32, heads=4)
    kw = dict(student=["full4"], hsk="full", student_layers=4, l_top=4, layer_choice="mapped")
    cache = open_cache(build_cache(make_cfg(data, tmp_path / "c", teacher, **kw), False))
    assert cache.info.assets.students["full4"].teacher_layers == (0, 1, 2, 3)
    run = dict(cache=cache.url, student="full4", out=str(tmp_path / "run"))
    stored = prepare(FitConfig(**run, layer_choice="mapped")).model.state_dict()
    here = prepare(FitConfig(**run, init_from=str(teacher), layer_choice="mapped"))
    assert all(torch.equal(stored[k], v) for k, v in here.model.state_dict().items())
    with pytest.raises(ConfigError, match=r"copies teacher layers \[0, 1, 2, 3\], --layer-choice"):
        prepare(FitConfig(**run, layer_choice="even"))


def test_importance_init_without_teacher_targets(tmp_path):
    """CE on raw rows (what `sweep --dry-run` times) from an importance-selected student: no
    teacher states to project to, so the kept channels shape no projection (was IndexError)."""
    from hsktrain.config import FitConfig
    from hsktrain.prepare import prepare

    data = write_sst2(tmp_path / "SST-2")
    teacher = make_bert(tmp_path / "t", layers=4, hidden=32, heads=4)
    shape = tmp_path / "small.json"
    fields = {"num_hidden_layers": 4, "hidden_size": 16, "num_attention_heads": 2}
    shape.write_text(json.dumps(fields | {"intermediate_size": 32}))
    rows = dict(data=str(data), split="train", max_length=16, chunk_rows=8)
    init = dict(init_from=str(teacher), select="importance", student=str(shape))
    cfg = FitConfig(mode="ce", out=str(tmp_path / "run"), **rows, **init)
    run = prepare(cfg)
    assert run.model.config.hidden_size == 16
