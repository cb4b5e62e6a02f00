"""Distil a student from a cache in a plain PyTorch loop: the paper's two stages, no teacher.

    python examples/plain_loop.py CACHE OUT [--student full4] [--epochs 3]

CACHE holds the student's init (`hskcache build` stores full4's by default); OUT receives the
student and its tokenizer as a Hugging Face folder (`from_pretrained`, `pipeline`).
"""

import argparse

import torch
from torch.utils.data import DataLoader

import hskcache
import hsktrain

p = argparse.ArgumentParser()
p.add_argument("cache")
p.add_argument("out")
p.add_argument("--student", default="full4")  # what `hskcache build` stores by default
p.add_argument("--epochs", type=int, default=3)
p.add_argument("--batch-size", type=int, default=32)
args = p.parse_args()

torch.manual_seed(0)
cache = hskcache.open_cache(args.cache)
width = cache.info.teacher.hidden_size
student, init = hsktrain.student_from_cache(cache, shape=args.student, seed=0)
hsk = hsktrain.HSKLoss(
    hsktrain.projection_for(student, init, width, "select", 0, teacher_dims=True), width
)
pred = hsktrain.PredictionLoss(temperature=1.0)

for stage, (lr, params) in enumerate(
    [(5e-5, [*student.parameters(), *hsk.parameters()]), (2e-5, list(student.parameters()))]
):
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.01)
    data = hsktrain.CacheDataset(cache, seed=0, stage=stage)  # fit's row order for this stage
    for epoch in range(args.epochs):
        data.set_epoch(epoch)
        for b in DataLoader(data, batch_size=args.batch_size, collate_fn=hsktrain.collate):
            out = student(**b.model_inputs(student), output_hidden_states=stage == 0)
            if stage == 0:
                loss = hsk(out.hidden_states, b.layers)
            else:
                loss = pred(out.logits, b.logits, b.labels)
            opt.zero_grad()
            loss.backward()
            opt.step()
        print(f"stage {stage + 1} epoch {epoch + 1}: last batch loss {loss.item():.4f}")

student.save_pretrained(args.out)
hsktrain.tokenizer_for(cache).save_pretrained(args.out)  # the teacher's, stored in the cache
print(f"student saved to {args.out}")
