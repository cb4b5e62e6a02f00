"""Distil a student from a cache with a Hugging Face `Trainer`: the dataset and the trainer
class are what changes in an existing Trainer script (needs `pip install accelerate`).

    python examples/trainer.py CACHE OUT [--student full4] [--epochs 3]

Stage 1 trains the student's hidden states on the stored HSK through the projection the HSK
loss owns; stage 2 its predictions on the stored teacher logits. OUT/ receives the student
(`from_pretrained`, `pipeline`), the Trainer's usual checkpoints under OUT/hsk and OUT/pred.
"""

import argparse

from transformers import TrainingArguments

import hskcache
import hsktrain
from hsktrain.hf import DistillTrainer, collate

p = argparse.ArgumentParser()
p.add_argument("cache")
p.add_argument("out")
p.add_argument("--student", default="full4")  # what `hskcache build` stores by default
p.add_argument("--epochs", type=float, default=3)
p.add_argument("--batch-size", type=int, default=32)
args = p.parse_args()

cache = hskcache.open_cache(args.cache)
width = cache.info.teacher.hidden_size
student, init = hsktrain.student_from_cache(cache, shape=args.student, seed=0)
proj = hsktrain.projection_for(student, init, width, "select", 0, teacher_dims=True)

for stage, lr in (("hsk", 5e-5), ("pred", 2e-5)):
    training = TrainingArguments(
        output_dir=f"{args.out}/{stage}",
        per_device_train_batch_size=args.batch_size,
        num_train_epochs=args.epochs,
        learning_rate=lr,
        weight_decay=0.01,
        lr_scheduler_type="constant",
        save_strategy="epoch",
        logging_steps=10,
        report_to=[],
    )
    trainer = DistillTrainer(
        model=student,
        args=training,
        processing_class=hsktrain.tokenizer_for(cache),  # saved beside the student
        train_dataset=hsktrain.CacheDataset(cache, seed=0, stage=int(stage == "pred")),
        data_collator=collate,
        stage=stage,
        hsk_loss=hsktrain.HSKLoss(proj, width),
    )
    trainer.train()

trainer.save_model(args.out)
print(f"student saved to {args.out}")
