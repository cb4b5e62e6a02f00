"""Where and how a run computes: the `--device` and `--amp` a command may ask for, refused with
the fix before any model loads. Torch is imported only to look for a CUDA GPU, so the command
configs that validate with these (and every `--help`) load without it."""

from __future__ import annotations

from hskcache.errors import ConfigError

AMPS = ("none", "bf16", "fp16")


def amp_problem(amp: str, device: str) -> str | None:
    """Why `--amp` cannot be used on `device`, or None."""
    if amp not in AMPS:
        return f"--amp must be one of {AMPS}"
    if amp == "fp16" and not device.startswith("cuda"):
        return "--amp fp16 needs --device cuda; on CPU use --amp bf16 or none"
    return None


def check_device(device: str) -> None:
    """Refuse a device torch cannot use here, before any model is loaded.

    Raises:
        ConfigError: not cpu/cuda[:N], or a CUDA device on a machine where torch sees none.
    """
    if device == "cpu":
        return
    kind, _, index = device.partition(":")
    if kind != "cuda" or (index and not index.isdigit()):
        raise ConfigError(f"unknown device '{device}'; use cpu, cuda or cuda:N")
    import torch  # only here: a CPU run's configs validate without loading it

    if not torch.cuda.is_available():
        raise ConfigError(
            f"device '{device}' asked for, but torch {torch.__version__} sees no CUDA GPU "
            "here; use --device cpu"
        )
    if index and int(index) >= torch.cuda.device_count():
        raise ConfigError(
            f"device '{device}' asked for, but torch sees {torch.cuda.device_count()} CUDA "
            "GPU(s); use a lower index"
        )


def device_name(device: str) -> str:
    """What computes on `device`, for the seconds a table records beside it: `cpu`, or
    `cuda (NVIDIA H200)` whatever the index (seconds compare across GPUs of one kind, not
    across kinds)."""
    if not device.startswith("cuda"):
        return device
    import torch

    return f"cuda ({torch.cuda.get_device_name(torch.device(device))})"
