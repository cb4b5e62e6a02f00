"""Checkpoint folders: `save_pretrained` models, safetensors for every other tensor, JSON state.

`best/` is the best dev checkpoint (a normal HF model folder that `hsktrain eval` and
`from_pretrained` load). `last/` adds what `--resume` needs: projection, optimizer moments,
RNG state and the loop's position (stage, epoch, batch). Folders are written beside their
target and swapped in with renames, so a kill never leaves a half-written checkpoint in place.
No pickle anywhere.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn


def _swap_in(tmp: Path, final: Path) -> None:
    old = final.with_name(final.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)


def save_model(
    folder: Path, model: nn.Module, tokenizer, proj: nn.Module | None, extra: dict
) -> None:
    """A loadable model folder plus the projection and a JSON record (config, metrics)."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model.save_pretrained(tmp)
    tokenizer.save_pretrained(tmp)
    if proj is not None and any(True for _ in proj.parameters()):
        save_file(
            {k: v.contiguous() for k, v in proj.state_dict().items()},
            tmp / "projection.safetensors",
        )
    (tmp / "hsktrain.json").write_text(json.dumps(extra, indent=2, default=str))
    _swap_in(tmp, folder)


def save_state(
    folder: Path,
    model: nn.Module,
    tokenizer,
    proj: nn.Module,
    opt: torch.optim.Optimizer,
    state: dict,
    extra: dict,
) -> None:
    """Everything `--resume` needs to continue exactly where the run stopped."""
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
    save_file(
        {f"p.{k}": v.contiguous() for k, v in proj.state_dict().items()}
        | {"rng": torch.get_rng_state()},
        tmp / "extra.safetensors",
    )
    opt_state = opt.state_dict()
    tensors = {
        f"{pid}.{name}": v.contiguous()
        for pid, s in opt_state["state"].items()
        for name, v in s.items()
    }
    if tensors:
        save_file(tensors, tmp / "optimizer.safetensors")
    (tmp / "state.json").write_text(
        json.dumps(
            {"loop": state, "param_groups": opt_state["param_groups"], "config": extra},
            indent=2,
            default=str,
        )
    )
    _swap_in(tmp, folder)


def load_state(
    folder: Path, model: nn.Module, proj: nn.Module, opt: torch.optim.Optimizer | None
) -> dict:
    """Restore weights (and the optimizer, when given); return the loop position."""
    meta = json.loads((folder / "state.json").read_text())
    model.load_state_dict(load_file(folder / "model.safetensors"))
    extra = load_file(folder / "extra.safetensors")
    proj.load_state_dict({k[2:]: v for k, v in extra.items() if k.startswith("p.")})
    torch.set_rng_state(extra["rng"])
    if opt is not None:
        state: dict[int, dict] = {}
        path = folder / "optimizer.safetensors"
        for key, v in load_file(path).items() if path.exists() else []:
            pid, name = key.split(".", 1)
            state.setdefault(int(pid), {})[name] = v
        opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return meta["loop"]
