"""Mixed precision, one definition for the teacher's forward (build, online targets) and the
student's (fit): the autocast context each `--amp` choice (devices.py) means."""

from __future__ import annotations

import contextlib

import torch

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: str, amp: str):
    """bf16 / fp16 autocast on `device`'s type, or nothing (`none`)."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=AMP_DTYPES[amp])
