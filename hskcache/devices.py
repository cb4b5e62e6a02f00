"""Where and how a run computes: the `--device` and `--amp` a command may ask for, refused with
the fix before any model loads. Torch is imported only to look for a CUDA GPU, so the command
configs that validate with these (and every `--help`) load without it."""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

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
    """What computes on `device`, for the seconds a table records beside it and for whether its
    weights repeat elsewhere: `cpu (AMD EPYC, family 25 model 1)` (a fine-tune repeats its
    weights on the same CPU model at the same thread count, and pinned on Intel CPUs with
    AVX2), or `cuda (NVIDIA H200)` whatever the index (seconds compare across GPUs of one kind,
    not across kinds); a CPU whose kernels `--pin-kernels` pinned says so, being slower."""
    if not device.startswith("cuda"):
        pinned = "; AVX2 kernels" if kernels_pinned() else ""
        return f"{device} ({cpu_name()}{pinned})"
    import torch

    return f"cuda ({torch.cuda.get_device_name(torch.device(device))})"


def cpu_name(cpuinfo: str = "/proc/cpuinfo") -> str:
    """This CPU as Linux names it, `AMD EPYC, family 25 model 1` (x86: the model name and the
    family and model numbers, which tell CPU generations apart where the name does not), else
    what `platform` knows (`arm64`, `x86_64`)."""
    try:
        text = Path(cpuinfo).read_text()
    except OSError:
        text = ""
    fields: dict[str, str] = {}
    for line in text.split("\n\n")[0].splitlines():  # the first processor's block
        key, sep, value = line.partition(":")
        if sep:
            fields.setdefault(key.strip(), value.strip())
    name = fields.get("model name")
    if name is None:
        return platform.processor() or platform.machine() or "unknown CPU"
    if "cpu family" in fields and "model" in fields:
        return f"{name}, family {fields['cpu family']} model {fields['model']}"
    return name


# The float kernels' AVX2 code paths: MKL's matrix products in its conditional-reproducibility
# mode (a branch MKL takes on Intel CPUs only), ATen's vectorised kernels (softmax, layer norm,
# reductions) at the AVX2 width.
PINNED_KERNELS = {"MKL_CBWR": "AVX2", "ATEN_CPU_CAPABILITY": "avx2"}
PIN_ENV = "HSKCACHE_PIN_KERNELS"


def kernels_pinned() -> bool:
    return all(os.environ.get(k) == v for k, v in PINNED_KERNELS.items())


def pin_cpu_kernels() -> None:
    """Run every CPU float kernel on its AVX2 code path, so the same fine-tune, build or fit
    gives the same bits on Intel x86 CPUs with AVX2 at the same thread count; unpinned, an
    AVX-512 CPU takes wider vectors and another summation order, and a teacher fine-tuned again
    there has other weights (another key in a study's tables). Not across vendors: MKL pins its
    branch on Intel CPUs only, so on an AMD CPU the weights repeat on that CPU model alone.
    1.4-1.5x slower on an AVX-512 CPU.

    Torch reads both settings once, at its first kernel, so this runs before any compute: the
    CLIs' `--pin-kernels` sets them before a command starts, a script calls this first thing;
    child processes inherit them.

    Raises:
        ConfigError: kernels already ran in this process at another width (too late to pin).
    """
    os.environ.update(PINNED_KERNELS)
    if "torch" in sys.modules:  # in the CLIs it is not yet: nothing has computed
        import torch

        width = torch.backends.cpu.get_cpu_capability()
        if width != "AVX2":
            raise ConfigError(
                f"--pin-kernels: torch's CPU kernels already run at {width} in this process; "
                "pin them before any computation: hskcache.pin_cpu_kernels() first thing in "
                f"a script, --pin-kernels (or {PIN_ENV}=1) before a command"
            )
