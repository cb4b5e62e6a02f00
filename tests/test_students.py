"""Weight selection: exact slices, and a same-shape selection reproduces the teacher."""

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from hskcache.errors import ConfigError
from hskcache.weight_selection import layer_subset, load_weights
from hsktrain.projection import make_projection
from hsktrain.students import build_student


def test_layer_subset():
    assert layer_subset(6, 4) == [0, 2, 3, 5]
    assert layer_subset(12, 4) == [0, 4, 7, 11]
    assert layer_subset(2, 2) == [0, 1] and layer_subset(6, 1) == [5]
    with pytest.raises(ConfigError):
        layer_subset(2, 4)


def test_same_shape_selection_is_the_teacher(tiny_bert):
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_bert, trust_remote_code=False)
    teacher.eval()
    shape = {
        "num_hidden_layers": 2,
        "hidden_size": 32,
        "num_attention_heads": 4,
        "intermediate_size": 64,
    }
    student, info = build_student("select", str(tiny_bert), shape, 2, 0)
    assert info["teacher_layers"] == [0, 1]
    ids = torch.tensor([[2, 10, 11, 12, 3]])
    with torch.no_grad():
        torch.testing.assert_close(student.eval()(ids).logits, teacher(ids).logits)


def test_narrow_selection_slices_per_head(tiny_bert):
    teacher = AutoModelForSequenceClassification.from_pretrained(tiny_bert, trust_remote_code=False)
    student, info = build_student("select", str(tiny_bert), "tiny", 2, 0)  # 2 heads x 8
    t_sd, s_sd = teacher.state_dict(), student.state_dict()
    # teacher: 4 heads x 8 dims; student keeps heads 0-1 (8 dims each) and hidden dims 0-15
    q_t = t_sd["bert.encoder.layer.1.attention.self.query.weight"]
    q_s = s_sd["bert.encoder.layer.1.attention.self.query.weight"]
    assert torch.equal(q_s, q_t[:16, :16])
    o_t = t_sd["bert.encoder.layer.0.attention.output.dense.weight"]
    assert torch.equal(s_sd["bert.encoder.layer.0.attention.output.dense.weight"], o_t[:16, :16])
    ffn = t_sd["bert.encoder.layer.0.intermediate.dense.weight"]
    assert torch.equal(s_sd["bert.encoder.layer.0.intermediate.dense.weight"], ffn[:32, :16])
    emb = t_sd["bert.embeddings.word_embeddings.weight"]
    assert torch.equal(s_sd["bert.embeddings.word_embeddings.weight"], emb[:, :16])


def test_select_keeps_the_first_dims_of_every_head(tmp_path):
    """MiniLM (12 heads x 32) -> TinyBERT4 (12 heads x 26): Q/K/V keep dims 0-25 of each head,
    not the first 312 dims (which would be heads 0-8 whole and part of head 9)."""
    from transformers import BertConfig, BertForSequenceClassification

    teacher_dir = tmp_path / "t"
    cfg = BertConfig(
        vocab_size=40,
        hidden_size=384,
        num_hidden_layers=1,
        num_attention_heads=12,
        intermediate_size=32,
        max_position_embeddings=16,
    )
    torch.manual_seed(0)
    BertForSequenceClassification(cfg).save_pretrained(teacher_dir)
    shape = {
        "num_hidden_layers": 1,
        "hidden_size": 312,
        "num_attention_heads": 12,
        "intermediate_size": 16,
    }
    student, _ = build_student("select", str(teacher_dir), shape, 2, 0)
    t_sd, s_sd = load_weights(teacher_dir), student.state_dict()
    kept = [h * 32 + d for h in range(12) for d in range(26)]  # head h's dims 0-25
    assert kept[25:28] == [25, 32, 33] and kept[-1] == 11 * 32 + 25
    attn = "bert.encoder.layer.0.attention"
    for name in ("query", "key", "value"):
        w_t, w_s = t_sd[f"{attn}.self.{name}.weight"], s_sd[f"{attn}.self.{name}.weight"]
        assert torch.equal(w_s, w_t[kept][:, :312])  # rows per head, input dims a prefix
        assert not torch.equal(w_s, w_t[:312, :312])
        assert torch.equal(s_sd[f"{attn}.self.{name}.bias"], t_sd[f"{attn}.self.{name}.bias"][kept])
    o_t = t_sd[f"{attn}.output.dense.weight"]  # (out hidden, in heads x dims)
    assert torch.equal(s_sd[f"{attn}.output.dense.weight"], o_t[:312][:, kept])


def test_projection_select_init():
    p = make_projection(2, 3, "select")
    assert p(torch.tensor([[1.0, 2.0]])).tolist() == [[1.0, 2.0, 0.0]]
    assert isinstance(make_projection(4, 4, "select"), torch.nn.Identity)


def test_student_from_json_config(tmp_path, tiny_bert):
    spec = tmp_path / "s.json"
    spec.write_text(
        '{"num_hidden_layers": 1, "hidden_size": 8, "num_attention_heads": 2, '
        '"intermediate_size": 16}'
    )
    student, info = build_student("select", str(tiny_bert), str(spec), 2, 0)
    assert student.config.num_hidden_layers == 1 and student.config.hidden_size == 8
    assert info["teacher_layers"] == [1]
    spec.write_text('{"hidden_size": 8}')
    with pytest.raises(ConfigError, match="lacks"):
        build_student("select", str(tiny_bert), str(spec), 2, 0)
    with pytest.raises(ConfigError, match="unknown student 'huge'"):
        build_student("random", str(tiny_bert), "huge", 2, 0)
