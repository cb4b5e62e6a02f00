"""`hsktrain export RUN/best --onnx OUT`: the model as ONNX, checked against PyTorch.

`torch.onnx.export` (the dynamo exporter) with dynamic batch and sequence axes and the inputs the
model's own tokenizer gives (BERT: input_ids, token_type_ids, attention_mask; MPNet: no
token_type_ids). The file is written beside OUT and renamed into place only after onnxruntime's
logits match PyTorch's on a few real-shaped batches (1 to 4 rows, short, paired and at the
token limit), so a refused export leaves nothing at OUT.
"""

from __future__ import annotations

import logging
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from hskcache.errors import ConfigError, ExportError
from hsktrain.outputs import new_output_file
from hsktrain.saved import SavedModel, load_saved

# Largest |onnx - pytorch| logit accepted (float32 both). Measured: 6e-9 on the tiny test
# BERT and MPNet, 4.8e-8 on the MiniLM-L6 package model (its classifier head seeded).
TOLERANCE = 1e-4
OPSET = 18  # the dynamo exporter's own default in torch 2.13; onnxruntime 1.17+ runs it

SENTENCES = (
    "a charming and often affecting journey .",
    "the plot is nothing but boilerplate clichés from start to finish , and the script assumes "
    "that not only would subtlety be lost on the target audience , but that it 's also too "
    "stupid to realize that they 've already seen this exact same movie a hundred times",
    "it 's a cookie-cutter movie , a cut-and-paste job .",
    "unflinchingly bleak and desperate",
)
PAIRS = (
    ("The company said it expects profits to rise.", "Profits are expected to rise, it said."),
    ("He left at noon.", "The meeting was cancelled because of the storm that hit the coast."),
)


@dataclass(frozen=True)
class ExportReport:
    path: Path
    inputs: tuple[str, ...]  # the ONNX graph's input names, as the tokenizer gives them
    rows: int  # rows compared with PyTorch
    batches: int
    max_abs_diff: float  # largest |onnx - pytorch| logit over those rows
    tolerance: float


def check_batches(saved: SavedModel) -> list[dict[str, np.ndarray]]:
    """Real-shaped batches: 4 single texts (padded), 2 pairs, 1 row, 2 rows at the token limit."""
    tok, n = saved.tokenizer, saved.max_length

    def enc(texts, pairs=None):
        return dict(
            tok(texts, pairs, padding=True, truncation=True, max_length=n, return_tensors="np")
        )

    long = " ".join([SENTENCES[1]] * (n // 8 + 1))
    return [
        enc(list(SENTENCES)),
        enc([a for a, _ in PAIRS], [b for _, b in PAIRS]),
        enc([SENTENCES[0]]),
        enc([long, long[: len(long) // 2]]),
    ]


class _Positional(torch.nn.Module):
    """The model called with the tokenizer's tensors in order, returning only the logits."""

    def __init__(self, model: torch.nn.Module, names: list[str]) -> None:
        super().__init__()
        self.model, self.names = model, names

    def forward(self, *tensors: torch.Tensor) -> torch.Tensor:
        return self.model(**dict(zip(self.names, tensors, strict=True))).logits


def export_onnx(
    model_dir: str | Path,
    out: str | Path,
    tolerance: float = TOLERANCE,
    overwrite: bool = False,
) -> ExportReport:
    """Export a saved model folder to one ONNX file and check it with onnxruntime.

    Args:
        model_dir: a model folder (`RUN/best`, a fine-tuned teacher).
        out: the `.onnx` file to write.
        tolerance: the largest |onnx - pytorch| logit difference accepted.
        overwrite: replace an existing `out`.

    Returns:
        What was written and how close it is.

    Raises:
        ConfigError: `out` exists (without `overwrite`) or cannot be written; the `export`
            extra is not installed; a tolerance <= 0.
        TeacherError: not a loadable model folder.
        ExportError: the exporter fails, or the ONNX logits differ past `tolerance`.
    """
    if not tolerance > 0:
        raise ConfigError(f"--tolerance {tolerance} must be > 0")
    out = new_output_file(out, "--onnx", overwrite)
    try:  # lazy: only export needs them, and they are an optional extra
        import onnxruntime as ort
        import onnxscript  # noqa: F401  (the dynamo exporter's dependency; missing: a late error)
    except ImportError as e:
        raise ConfigError(
            f"ONNX export needs onnx, onnxscript and onnxruntime ({e}); "
            "pip install 'hskcache[export]'"
        ) from e
    saved = load_saved(model_dir)
    batches = check_batches(saved)
    names = list(batches[0])
    example = tuple(torch.from_numpy(batches[0][k]) for k in names)
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    tmp = out.with_name(f".{out.name}.partial")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)  # "torchvision is not installed"
    try:
        # the exporter's own chatter (deprecations, axis renames) is not the user's to act on
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                _Positional(saved.model, names).eval(),
                example,
                str(tmp),
                input_names=names,
                output_names=["logits"],
                dynamic_shapes=(tuple({0: batch, 1: seq} for _ in names),),
                opset_version=OPSET,
                dynamo=True,
                external_data=False,
                verbose=False,
            )
    except Exception as e:  # the exporter raises many types; all mean "cannot export"
        tmp.unlink(missing_ok=True)
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ExportError(f"{saved.folder}: torch.onnx cannot export it ({first})") from e
    diff = _max_difference(ort, tmp, saved, batches)
    if not diff <= tolerance:  # NaN is refused too
        tmp.unlink()
        raise ExportError(
            f"{saved.folder}: the ONNX logits differ from PyTorch's by up to {diff:.3g} "
            f"(tolerance {tolerance:g}); nothing written to {out}. Report the model type "
            f"({saved.model.config.model_type}), or pass a larger --tolerance if you accept it"
        )
    os.replace(tmp, out)
    rows = sum(len(b[names[0]]) for b in batches)
    return ExportReport(out, tuple(names), rows, len(batches), diff, tolerance)


def _max_difference(ort, path: Path, saved: SavedModel, batches) -> float:
    """Largest |onnx - pytorch| logit over `batches` (onnxruntime on CPU)."""
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    diffs = []
    for b in batches:
        (onnx_logits,) = session.run(["logits"], b)
        with torch.no_grad():
            ref = saved.model(**{k: torch.from_numpy(v) for k, v in b.items()}).logits.numpy()
        diffs.append(np.max(np.abs(onnx_logits - ref)))
    return float(np.max(diffs))  # NaN if any logit is NaN
