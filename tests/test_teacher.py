"""The hook-based [CLS] scores equal eager attention's; bad teacher folders fail clearly."""

import json

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from hskcache.errors import ConfigError, TeacherError
from hskcache.teacher import ClsScoreProbe, check_max_length, load_teacher, teacher_forward

PAIRS = (["the movie was good and fun", "bad"], ["i loved it", "a very very long dull plot"])


@pytest.mark.parametrize("family", ["tiny_bert", "tiny_mpnet"])
def test_probe_scores_match_eager_attention(family, request):
    path = request.getfixturevalue(family)
    teacher = load_teacher(str(path), num_labels=2)
    enc = teacher.tokenizer(*PAIRS, padding=True, return_tensors="pt")
    mask = enc["attention_mask"]
    assert (mask == 0).any()  # padding is part of what is checked
    probe = ClsScoreProbe(teacher.model, [0, 1])
    logits, hidden, _ = teacher_forward(
        teacher, enc["input_ids"], mask, enc.get("token_type_ids"), probe
    )
    eager = AutoModelForSequenceClassification.from_pretrained(
        path, attn_implementation="eager", trust_remote_code=False
    )
    eager.eval()
    with torch.no_grad():
        ref = eager(**enc, output_attentions=True, output_hidden_states=True)
    torch.testing.assert_close(logits, ref.logits, rtol=1e-5, atol=1e-5)
    for layer in (0, 1):
        per_head = probe.scores(layer, mask)  # (B, H, T) pre-softmax
        probs = torch.softmax(per_head, dim=-1)
        torch.testing.assert_close(probs, ref.attentions[layer][:, :, 0, :], rtol=1e-5, atol=1e-6)
    probe.close()


def test_default_teacher_head_is_flagged():
    teacher = load_teacher(None, num_labels=2)
    assert teacher.config.model_type == "bert" and teacher.config.num_hidden_layers == 6
    assert teacher.head_initialised  # a sentence encoder: no task head yet
    assert load_teacher(None, 2).weights_sha256 == teacher.weights_sha256  # seeded head


def test_teacher_errors(tmp_path, tiny_bert):
    with pytest.raises(TeacherError, match="no config.json"):
        load_teacher(str(tmp_path), 2)
    gpt = tmp_path / "gpt"
    gpt.mkdir()
    (gpt / "config.json").write_text(json.dumps({"model_type": "gpt2"}))
    (gpt / "model.safetensors").write_bytes(b"")
    with pytest.raises(TeacherError, match="'gpt2' is not a supported"):
        load_teacher(str(gpt), 2)
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    (pickled / "config.json").write_text((tiny_bert / "config.json").read_text())
    (pickled / "pytorch_model.bin").write_bytes(b"")
    with pytest.raises(TeacherError, match="pickle"):
        load_teacher(str(pickled), 2)
    with pytest.raises(TeacherError, match="labels"):
        load_teacher(str(tiny_bert), 3)
    with pytest.raises(ConfigError, match="max length 500"):
        check_max_length(load_teacher(str(tiny_bert), 2), 500)


def test_custom_code_refused_in_any_config(tmp_path, tiny_bert):
    import shutil

    from hskcache.devices import check_device
    from hskcache.teacher import check_model_folder

    folder = tmp_path / "m"
    shutil.copytree(tiny_bert, folder)
    check_model_folder(folder)  # a plain folder passes
    tok_cfg = folder / "tokenizer_config.json"
    tok_cfg.write_text(json.dumps({**json.loads(tok_cfg.read_text()), "auto_map": {}}))
    with pytest.raises(TeacherError, match=r"tokenizer_config.json: has an auto_map"):
        check_model_folder(folder)
    (folder / "tokenizer_config.json").write_text("{")
    with pytest.raises(TeacherError, match=r"tokenizer_config.json: not readable JSON"):
        check_model_folder(folder)
    cfg = folder / "config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "model_type": "my-bert"}))
    with pytest.raises(TeacherError) as e:
        check_model_folder(folder)
    assert str(e.value) == (
        f"{cfg}: model type 'my-bert' is unknown to transformers (custom code?); refused: use a "
        "BERT-style family (bert, camembert, electra, mpnet, roberta, xlm-roberta)"
    )
    with pytest.raises(ConfigError, match=r"^unknown device 'gpu'; use cpu, cuda or cuda:N$"):
        check_device("gpu")
