"""Distil from a cache inside a Hugging Face `Trainer` script: swap the dataset and the trainer
class, keep everything else (arguments, callbacks, logging, saving, `push_to_hub`).

    trainer = DistillTrainer(
        model=student, args=args, train_dataset=CacheDataset(cache), data_collator=collate,
        stage="hsk", hsk_loss=HSKLoss(proj, cache.info.teacher.hidden_size),
    )

The paper's recipe is two `train()` calls on the same student: `stage="hsk"` (the student's
hidden states against the stored HSK, through the projection `hsk_loss` owns), then
`stage="pred"` (soft cross-entropy to the stored teacher logits, `prediction_loss`). The
projection's parameters join the optimizer beside the student's (two groups each: weight decay,
and none for biases and norms, as `hsktrain fit` does), and are saved beside the student as
`hsk_projection.safetensors` in every checkpoint. `model` stays the plain student, so
`save_model` writes a folder that `from_pretrained` and `pipeline` load.

Differences from `hsktrain fit` that a script controls through `TrainingArguments`: the
Trainer clips the student's gradient norm alone (`fit` clips student and projection together;
`max_grad_norm=0` turns both off), and its warmup starts at lr 0 where `fit`'s first step
already takes 1/warmup of the peak. On the CPU it sets `dataloader_pin_memory` off (nothing to
pin for there; torch would warn at every loader).
"""

from __future__ import annotations

import os

import torch
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import Trainer

from hskcache.targets import Batch, LayerTargets
from hsktrain.dataset import collate as padded
from hsktrain.losses import HSKLoss, PredictionLoss
from hsktrain.step import no_decay

PROJECTION_FILE = "hsk_projection.safetensors"
STAGES = ("hsk", "pred")


def collate(rows: list[dict]) -> dict:
    """Rows of `CacheDataset` -> one padded batch as the plain dict of tensors a `Trainer`
    moves to its device and counts (`hsktrain.dataset.collate` gives a `Batch`)."""
    b = padded(rows)
    return {
        "input_ids": b.input_ids,
        "attention_mask": b.attention_mask,
        "token_type_ids": b.token_type_ids,
        "labels": b.labels,
        "teacher_logits": b.logits,
        "hsk_layers": [
            (la.student, la.teacher, la.positions, la.values, la.dims) for la in b.layers
        ],
    }


def batch_of(inputs: dict) -> Batch:
    """`collate`'s dict (on the device by now) back to a `Batch`."""
    layers = [LayerTargets(*la) for la in inputs["hsk_layers"]]
    keys = ("input_ids", "attention_mask", "token_type_ids", "labels", "teacher_logits")
    return Batch(*(inputs[k] for k in keys), layers)


class DistillTrainer(Trainer):
    """A `Trainer` whose loss is a distillation stage's, read from a cache's batches.

    Args:
        stage: "hsk" (needs `hsk_loss`) or "pred".
        hsk_loss: the HSK loss and its projection (`hsktrain.losses.HSKLoss`).
        prediction_loss: the prediction stage's loss (default: soft CE at temperature 1).
        *args, **kwargs: as `transformers.Trainer`; `train_dataset` a `CacheDataset` and
            `data_collator` this module's `collate`.
    """

    def __init__(
        self,
        *args,
        stage: str = "hsk",
        hsk_loss: HSKLoss | None = None,
        prediction_loss: PredictionLoss | None = None,
        **kwargs,
    ):
        if stage not in STAGES:
            raise ValueError(f"stage must be one of {STAGES}, not {stage!r}")
        if stage == "hsk" and hsk_loss is None:
            raise ValueError("stage 'hsk' needs hsk_loss=HSKLoss(projection, teacher_width)")
        super().__init__(*args, **kwargs)
        if self.args.device.type == "cpu":  # no device to pin for: torch warns at each loader
            self.args.dataloader_pin_memory = False
        self.stage, self.hsk_loss = stage, hsk_loss
        self.prediction_loss = prediction_loss or PredictionLoss()
        if hsk_loss is not None:
            hsk_loss.to(self.args.device)

    def create_optimizer(self, model=None):
        """The Trainer's optimizer, with the projection's parameters added to it."""
        opt = super().create_optimizer(model)
        if self.stage == "hsk" and self.hsk_loss is not None:
            named = list(self.hsk_loss.proj.named_parameters())
            decay = self.args.weight_decay
            for wd, keep in ((decay, lambda n: not no_decay(n)), (0.0, no_decay)):
                params = [p for n, p in named if keep(n)]
                if params:
                    opt.add_param_group({"params": params, "weight_decay": wd})
        return opt

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        b = batch_of(inputs)
        out = model(**b.model_inputs(model), output_hidden_states=self.stage == "hsk")
        if self.stage == "hsk":
            loss = self.hsk_loss(out.hidden_states, b.layers)
        else:
            loss = self.prediction_loss(out.logits, b.logits, b.labels)
        return (loss, out) if return_outputs else loss

    def _save(self, output_dir: str | None = None, state_dict=None) -> None:
        super()._save(output_dir, state_dict)
        if self.hsk_loss is not None and not isinstance(self.hsk_loss.proj, nn.Identity):
            folder = output_dir or self.args.output_dir
            state = {k: v.contiguous() for k, v in self.hsk_loss.proj.state_dict().items()}
            save_file(state, os.path.join(folder, PROJECTION_FILE))

    def _load_from_checkpoint(self, resume_from_checkpoint, model=None):
        super()._load_from_checkpoint(resume_from_checkpoint, model)
        path = os.path.join(resume_from_checkpoint, PROJECTION_FILE)
        if self.hsk_loss is not None and os.path.isfile(path):
            self.hsk_loss.proj.load_state_dict(load_file(path, device=str(self.args.device)))

    def _get_collator_with_removed_columns(self, data_collator, description=None):
        """The collator as given: a row's targets are no model argument, and must stay."""
        return data_collator

    def _get_num_items_in_batch(self, batch_samples, device):
        """None: each stage's loss is already a mean over its own items."""
        return None

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        """Evaluation on a cache's batches: the stage's loss (no generation, no metrics)."""
        with torch.no_grad():
            loss = self.compute_loss(model, self._prepare_inputs(inputs))
        return loss.detach(), None, None
