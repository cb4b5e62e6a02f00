"""The public Python API: decoded targets, the cache as an IterableDataset, the losses as
modules, and a Hugging Face Trainer that trains as `hsktrain fit` does."""

from __future__ import annotations

import json
from collections import Counter

import numpy as np
import pytest
import torch

from conftest import make_bert, write_sst2
from hskcache.build import build_cache
from hskcache.config import BuildConfig
from hskcache.reader import open_cache
from hskcache.selection import scatter_width
from hsktrain.batch import from_cache
from hsktrain.dataset import CacheDataset, collate
from hsktrain.loader import ChunkShuffleLoader
from hsktrain.losses import HSKLoss, PredictionLoss

ROWS = 40


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> dict:
    """A teacher without dropout (so two training loops can agree step by step) and a cache
    of 40 rows in 5 chunks that stores the `tiny` student's init."""
    root = tmp_path_factory.mktemp("api")
    teacher = make_bert(root / "teacher")
    config = json.loads((teacher / "config.json").read_text())
    config |= {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    (teacher / "config.json").write_text(json.dumps(config))
    data = write_sst2(root / "SST-2", ROWS)
    cfg = BuildConfig(
        data=str(data),
        out=str(root / "cache"),
        teacher=str(teacher),
        hsk="1l_4t_0.25h",
        max_length=16,
        chunk_rows=8,
        student_layers=2,
        student=["tiny"],
    )
    return {"root": root, "teacher": teacher, "cache": build_cache(cfg, show_progress=False)}


def _key(input_ids: torch.Tensor) -> tuple:
    return tuple(input_ids.tolist())


def _rows(b) -> Counter:
    """A batch's rows by their real tokens (padding differs with the batch's longest row)."""
    return Counter(
        _key(ids[m.bool()]) for ids, m in zip(b.input_ids, b.attention_mask, strict=True)
    )


def test_targets_are_the_teachers_hidden_states(world):
    """`Cache.targets` decodes every stored value back to the teacher's own hidden state at
    its position and dim (float16 storage: within its rounding), with no codec in sight."""
    from transformers import AutoModelForSequenceClassification

    cache = open_cache(world["cache"])
    b = cache.targets(0, ROWS)
    teacher = AutoModelForSequenceClassification.from_pretrained(world["teacher"]).eval()
    with torch.no_grad():
        out = teacher(b.input_ids, b.attention_mask, b.token_type_ids, output_hidden_states=True)
    assert b.input_ids.shape[1] == int(b.attention_mask.sum(1).max())  # trimmed to the longest
    torch.testing.assert_close(b.logits, out.logits, atol=1e-5, rtol=0)
    (la,) = b.layers
    hidden = out.hidden_states[la.teacher]  # (n, T, H)
    for i in range(ROWS):
        for k, pos in enumerate(la.positions[i].tolist()):
            if pos < 0:
                continue
            want = hidden[i, pos, la.dims[i, k]]
            torch.testing.assert_close(la.values[i, k], want, atol=2e-3, rtol=1e-3)
    dense = scatter_width(la.values, la.dims, hidden.shape[-1])
    assert int((dense != 0).sum(-1).max()) == la.values.shape[-1]  # 25% of 32 dims = 8 kept


def test_dataset_batches_are_fits_batches(world):
    """A DataLoader over the dataset, batch 8, gives the batches `fit`'s loader gives (seed
    3), row for row and target for target; every row comes once."""
    cache = open_cache(world["cache"])
    loader = torch.utils.data.DataLoader(
        CacheDataset(cache, seed=3), batch_size=8, collate_fn=collate
    )
    mine = list(loader)
    fits = [
        from_cache(r, cache.manifest, "cpu") for r in ChunkShuffleLoader(cache, 8, 3).iterate(0)
    ]
    assert len(mine) == len(fits) == ROWS // 8
    for a, b in zip(mine, fits, strict=True):
        assert torch.equal(a.input_ids, b.input_ids) and torch.equal(a.labels, b.labels)
        assert torch.equal(a.attention_mask, b.attention_mask)
        assert torch.equal(a.logits, b.logits)
        assert torch.equal(a.layers[0].values, b.layers[0].values)
        assert torch.equal(a.layers[0].dims, b.layers[0].dims)
        assert torch.equal(a.layers[0].positions, b.layers[0].positions)
    assert sum((_rows(b) for b in mine), Counter()) == _rows(cache.targets(0, ROWS))


def test_dataset_is_seeded_and_resumes_exactly(world):
    ds = CacheDataset(world["cache"], seed=1)
    epoch0 = [_key(r["input_ids"]) for r in ds]
    assert ds.state_dict() == {"epoch": 1, "seen": 0}  # the next epoch, from its first row
    epoch1 = [_key(r["input_ids"]) for r in ds]
    again = [_key(r["input_ids"]) for r in CacheDataset(world["cache"], seed=1)]
    assert again == epoch0 and epoch1 != epoch0 and sorted(epoch1) == sorted(epoch0)
    other_seed = [_key(r["input_ids"]) for r in CacheDataset(world["cache"], seed=2)]
    assert other_seed != epoch0

    ds = CacheDataset(world["cache"], seed=1)
    it = iter(ds)
    head = [_key(next(it)["input_ids"]) for _ in range(13)]  # mid-chunk
    state = ds.state_dict()
    assert state == {"epoch": 0, "seen": 13}
    resumed = CacheDataset(world["cache"], seed=1)
    resumed.load_state_dict(state)
    assert head + [_key(r["input_ids"]) for r in resumed] == epoch0


def test_workers_share_the_rows_without_overlap(world):
    loader = torch.utils.data.DataLoader(
        CacheDataset(world["cache"], seed=0), batch_size=4, collate_fn=collate, num_workers=2
    )
    seen = sum((_rows(b) for b in loader), Counter())
    assert seen == _rows(open_cache(world["cache"]).targets(0, ROWS))


def test_hsk_loss_is_the_papers_mse_by_hand():
    """Unkept dims are targets of 0; padded positions (-1) do not count; layers add up."""
    from hskcache.targets import LayerTargets

    torch.manual_seed(0)
    hidden = (torch.randn(2, 5, 3), torch.randn(2, 5, 3))  # (B, T, h_s), two states
    proj = torch.nn.Linear(3, 6)
    positions = torch.tensor([[0, 2], [4, -1]])
    values = torch.randn(2, 2, 2)
    dims = torch.tensor([[[1, 4], [0, 5]], [[2, 3], [0, 1]]])
    layers = [
        LayerTargets(1, 3, positions, values, dims),
        LayerTargets(0, 1, positions, values, None),
    ]
    layers[1].values = torch.randn(2, 2, 6)  # a full-width layer
    loss = HSKLoss(proj, 6, weight=0.5)(hidden, layers)
    want = 0.0
    for la in layers:
        sq, n = 0.0, 0
        for i in range(2):
            for k in range(2):
                p = int(positions[i, k])
                if p < 0:
                    continue
                target = torch.zeros(6)
                if la.dims is None:
                    target = la.values[i, k]
                else:
                    target[la.dims[i, k]] = la.values[i, k]
                sq += float(((proj(hidden[la.student][i, p]) - target) ** 2).sum().detach())
                n += 6
        want += 0.5 * sq / n
    assert loss.item() == pytest.approx(want, rel=1e-6)


def test_prediction_loss_is_soft_cross_entropy_by_hand():
    s, t = torch.tensor([[1.0, -1.0], [0.5, 2.0]]), torch.tensor([[2.0, 0.0], [0.0, 1.0]])
    labels = torch.tensor([0, 1])
    T = 2.0
    p = torch.softmax(t / T, -1)
    want = -(p * torch.log_softmax(s / T, -1)).sum(-1).mean()
    hard = torch.nn.functional.cross_entropy(s, labels)
    loss = PredictionLoss(temperature=T, hard_weight=0.3)(s, t, labels)
    assert loss.item() == pytest.approx((want + 0.3 * hard).item(), rel=1e-6)
    mse = PredictionLoss(regression=True)(torch.tensor([[0.5], [1.0]]), t, torch.tensor([1.0, 1.0]))
    assert mse.item() == pytest.approx((0.25 + 0.0) / 2)


def _trainer_losses(world, tmp_path, stage: str, si: int, lr: float, model, hsk_loss) -> list:
    """One epoch of one stage through `DistillTrainer`; the loss of every step."""
    from transformers import TrainingArguments

    from hsktrain.hf import DistillTrainer, collate

    losses: list[float] = []

    class Recording(DistillTrainer):
        def compute_loss(self, *args, **kwargs):
            loss = super().compute_loss(*args, **kwargs)
            losses.append(loss.item())
            return loss

    args = TrainingArguments(
        output_dir=str(tmp_path / f"hf-{stage}"),
        per_device_train_batch_size=8,
        num_train_epochs=1,
        learning_rate=lr,
        weight_decay=0.01,
        lr_scheduler_type="constant",
        max_grad_norm=0.0,
        optim="adamw_torch",
        seed=0,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=True,
    )
    trainer = Recording(
        model=model,
        args=args,
        train_dataset=CacheDataset(world["cache"], seed=0, stage=si),
        data_collator=collate,  # hsktrain.hf's: a dict, as a Trainer expects
        stage=stage,
        hsk_loss=hsk_loss,
    )
    trainer.train()
    return losses


def test_trainer_trains_as_fit_does(world, tmp_path):
    """Both stages of the paper's recipe through a Trainer and through `hsktrain fit` on the
    same cache, seed and batches: the same loss at every step (to 1e-5: the same AdamW, in
    another parameter order), and students that predict the same."""
    from hskcache.targets import decode_rows
    from hsktrain.config import FitConfig
    from hsktrain.projection import projection_for
    from hsktrain.students import student_from_cache
    from hsktrain.train import fit

    cfg = FitConfig(
        out=str(tmp_path / "fit"),
        cache=str(world["cache"]),
        student="tiny",
        hsk_epochs=1,
        pred_epochs=1,
        batch_size=8,
        seed=0,
    )
    fit(cfg, show_progress=False)
    log = [json.loads(x) for x in (tmp_path / "fit/metrics.jsonl").read_text().splitlines()]
    fit_losses = {
        s: [r["loss"] for r in log if r.get("stage") == s and "loss" in r and "step" in r]
        for s in ("hsk", "pred")
    }

    cache = open_cache(world["cache"])
    model, info = student_from_cache(cache, "select", "tiny", 2, 0, None, None)
    proj = projection_for(model, info, cache.info.teacher.hidden_size, "select", 0, True)
    hsk = HSKLoss(proj, cache.info.teacher.hidden_size)
    hf_hsk = _trainer_losses(world, tmp_path, "hsk", 0, cfg.hsk_lr, model, hsk)
    hf_pred = _trainer_losses(world, tmp_path, "pred", 1, cfg.pred_lr, model, None)
    assert len(hf_hsk) == len(fit_losses["hsk"]) == ROWS // 8
    np.testing.assert_allclose(hf_hsk, fit_losses["hsk"], rtol=0, atol=1e-5)
    np.testing.assert_allclose(hf_pred, fit_losses["pred"], rtol=0, atol=1e-5)

    from safetensors.torch import load_file

    fitted, _ = student_from_cache(cache, "select", "tiny", 2, 0, None, None)
    fitted.load_state_dict(load_file(tmp_path / "fit/last/model.safetensors"))
    b = decode_rows(cache.manifest, cache.read(0, ROWS))
    with torch.no_grad():
        ours = model.eval()(**b.model_inputs(model)).logits
        theirs = fitted.eval()(**b.model_inputs(fitted)).logits
    torch.testing.assert_close(ours, theirs, atol=1e-5, rtol=0)


@pytest.mark.parametrize("script", ["plain_loop.py", "trainer.py"])
def test_examples_train_a_student_that_loads(world, tmp_path, script):
    """Both examples run as written on a tiny cache and save a student `from_pretrained`
    loads and a `pipeline` runs."""
    import subprocess
    import sys
    from pathlib import Path

    from transformers import AutoModelForSequenceClassification, pipeline

    example = Path(__file__).parents[1] / "examples" / script
    out = tmp_path / "student"
    run = subprocess.run(
        [sys.executable, str(example), str(world["cache"]), str(out), "--student", "tiny"]
        + ["--epochs", "1", "--batch-size", "8"],
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert f"student saved to {out}" in run.stdout
    model = AutoModelForSequenceClassification.from_pretrained(out)
    assert model.config.num_hidden_layers == 2 and model.config.hidden_size == 16  # `tiny`
    (answer,) = pipeline("text-classification", model=str(out))("a good film")
    assert answer["label"] in model.config.id2label.values() and 0 <= answer["score"] <= 1


def test_python_md_examples_run(world, tmp_path, monkeypatch):
    """Every python block of docs/python.md, as written but for its paths (a tiny cache,
    teacher and MRPC folder) and the student shape (`tiny`: the teacher is 32 wide)."""
    import re
    from pathlib import Path

    from conftest import write_mrpc

    page = (Path(__file__).parents[1] / "docs" / "python.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", page, re.S)
    assert len(blocks) == 5
    mrpc = write_mrpc(tmp_path / "MRPC")
    swaps = {
        "caches/mrpc-1l_10t_0.1h": str(world["cache"]),
        'student=["full4"]': 'student=["tiny"], student_layers=2',
        "full4": "tiny",
        "GLUE/MRPC": str(mrpc),
        "teacher/best": str(world["teacher"]),
    }
    monkeypatch.chdir(tmp_path)
    for code in blocks:
        for old, new in swaps.items():
            code = code.replace(old, new)
        exec(compile(code, "docs/python.md", "exec"), {})
    assert (tmp_path / "runs/student/best/config.json").is_file()
