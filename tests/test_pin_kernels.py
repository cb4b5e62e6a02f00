"""`--pin-kernels`: a fine-tune gives the same weights on a CPU without AVX-512 as on one with
it. The other CPU is this one with MKL told to use AVX2 at most (`MKL_ENABLE_INSTRUCTIONS`),
the way MKL runs where AVX-512 is missing; and the tables say which runs were pinned."""

from __future__ import annotations

import os
import platform
import subprocess
import sys

import pytest
import torch

from conftest import make_bert, write_sst2
from hskcache import pin_cpu_kernels
from hskcache.devices import PINNED_KERNELS, cpu_name, device_name
from hskcache.errors import ConfigError
from hskcache.teacher import load_teacher

CPU = torch.backends.cpu.get_cpu_capability()


def finetune_sha(tmp_path, name: str, *flags: str, **env: str) -> str:
    """The weights' sha256 of a 1-epoch fine-tune in a fresh process (torch fixes its kernels
    once a process), `flags` before the command, `env` over this process's (unpinned) one."""
    teacher, data = tmp_path / "teacher", tmp_path / "SST-2"
    if not teacher.exists():
        make_bert(teacher, hidden=64)
        write_sst2(data)
    out = tmp_path / name
    clean = {k: v for k, v in os.environ.items() if k not in PINNED_KERNELS}
    args = ["finetune", "--data", str(data), "--model", str(teacher), "--out", str(out)]
    proc = subprocess.run(
        [sys.executable, "-m", "hsktrain.cli", *flags, *args, "--epochs", "1", "--quiet"],
        env=clean | {"OMP_NUM_THREADS": "2"} | env,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stderr
    return load_teacher(str(out / "best"), 2, "cpu", "float32", 0).weights_sha256


@pytest.mark.skipif(not CPU.startswith("AVX"), reason="pins x86 kernels: this CPU has no AVX2")
def test_pinned_fine_tunes_give_the_same_weights_on_a_cpu_without_avx512(tmp_path):
    avx2_only = {"MKL_ENABLE_INSTRUCTIONS": "AVX2"}
    pinned = finetune_sha(tmp_path, "here", "--pin-kernels")
    assert finetune_sha(tmp_path, "there", "--pin-kernels", **avx2_only) == pinned
    assert finetune_sha(tmp_path, "env", HSKCACHE_PIN_KERNELS="1", **avx2_only) == pinned
    if CPU.startswith("AVX512"):  # unpinned, the two CPUs' kernels differ: other weights
        here = finetune_sha(tmp_path, "plain-here")
        assert finetune_sha(tmp_path, "plain-there", **avx2_only) != here != pinned


@pytest.mark.skipif(CPU == "AVX2", reason="this process already computes at the pinned width")
def test_pinning_after_kernels_ran_is_refused(monkeypatch):
    for k in PINNED_KERNELS:  # restored after the test: later subprocesses run unpinned
        monkeypatch.setenv(k, "")
    torch.ones(64).softmax(0)  # a kernel ran: torch's width is fixed for this process
    with pytest.raises(ConfigError) as e:
        pin_cpu_kernels()
    assert str(e.value) == (
        f"--pin-kernels: torch's CPU kernels already run at {CPU} in this process; pin them "
        "before any computation: hskcache.pin_cpu_kernels() first thing in a script, "
        "--pin-kernels (or HSKCACHE_PIN_KERNELS=1) before a command"
    )


def test_tables_say_which_cpu_and_whether_pinned(monkeypatch):
    for k in PINNED_KERNELS:
        monkeypatch.delenv(k, raising=False)
    assert device_name("cpu") == f"cpu ({cpu_name()})"
    for k, v in PINNED_KERNELS.items():
        monkeypatch.setenv(k, v)
    # slower: its seconds are kept apart
    assert device_name("cpu") == f"cpu ({cpu_name()}; AVX2 kernels)"


AMD = """processor\t: 0
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC

processor\t: 1
vendor_id\t: AuthenticAMD
cpu family\t: 25
model\t\t: 1
model name\t: AMD EPYC
"""


def test_cpu_name_is_the_model_and_its_family_numbers(tmp_path, monkeypatch):
    info = tmp_path / "cpuinfo"
    info.write_text(AMD)
    assert cpu_name(str(info)) == "AMD EPYC, family 25 model 1"
    info.write_text("processor\t: 0\nmodel name\t: Intel(R) Xeon(R) Processor\n")
    assert cpu_name(str(info)) == "Intel(R) Xeon(R) Processor"  # no numbers: the name alone
    info.write_text("processor\t: 0\nBogoMIPS\t: 50.00\nCPU part\t: 0xd0c\n")  # an ARM CPU
    monkeypatch.setattr(platform, "processor", lambda: "")
    monkeypatch.setattr(platform, "machine", lambda: "aarch64")
    assert cpu_name(str(info)) == "aarch64"
    assert cpu_name(str(tmp_path / "missing")) == "aarch64"  # macOS, Windows: no such file
