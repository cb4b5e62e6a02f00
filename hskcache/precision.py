"""Mixed precision, one definition for the teacher's forward (build, online targets) and the
student's (fit): the `--amp` choices and the autocast context they mean."""

from __future__ import annotations

import contextlib

import torch

AMPS = ("none", "bf16", "fp16")
AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast(device: str, amp: str):
    """bf16 / fp16 autocast on `device`'s type, or nothing (`none`)."""
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=AMP_DTYPES[amp])


def amp_problem(amp: str, device: str) -> str | None:
    """Why `--amp` cannot be used on `device`, or None."""
    if amp not in AMPS:
        return f"--amp must be one of {AMPS}"
    if amp == "fp16" and not device.startswith("cuda"):
        return "--amp fp16 needs --device cuda; on CPU use --amp bf16 or none"
    return None
