"""Checkpoint folders: `save_pretrained` models, safetensors for every other tensor, JSON state.

`best/` is the best dev checkpoint (a normal HF model folder that `hsktrain eval` and
`from_pretrained` load). `last/` adds what `--resume` needs: projection, optimizer moments,
every rank's RNG states (CPU, and CUDA when present) and the loop's position (stage, epoch,
batch). Folders are written beside their target (`X.tmp`, `state.json` last) and swapped in with
two renames (`X` -> `X.old`, `X.tmp` -> `X`); `recover` finishes a swap a kill interrupted, so
a kill never loses the last complete checkpoint. `resume_point` refuses to continue a finished
run or one started with other settings. No pickle anywhere.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from hskcache.distributed import World
from hskcache.errors import ConfigError, TeacherError
from hsktrain.config import flag

# What `--resume` refuses to change: each decides what the saved moments and position mean
# (`buffer_chunks` and `group_by_length` decide which rows the saved position has seen).
RESUME_FIELDS = ("student", "batch_size", "seed", "mode", "buffer_chunks", "group_by_length")


def rng_state(rank: int) -> dict[str, torch.Tensor]:
    """This process's RNG states, keyed by rank (each DDP rank draws its own dropout masks)."""
    state = {f"rng.{rank}": torch.get_rng_state()}
    if torch.cuda.is_available():
        state[f"cuda_rng.{rank}"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(tensors: dict[str, torch.Tensor], rank: int) -> None:
    """Restore this rank's RNG states saved by `rng_state` (CUDA's when saved and present);
    `rng` is the one state of a checkpoint written before runs had ranks."""
    torch.set_rng_state(tensors[f"rng.{rank}"] if f"rng.{rank}" in tensors else tensors["rng"])
    if f"cuda_rng.{rank}" in tensors and torch.cuda.is_available():
        torch.cuda.set_rng_state(tensors[f"cuda_rng.{rank}"])


def recover(final: Path, marker: str = "state.json") -> None:
    """Finish or roll back a swap a kill interrupted, before anything reads `final`.

    Killed between the two renames, `final` is missing, `final.old` holds the previous checkpoint
    and `final.tmp` the new one, complete (renamed only once written): the newer wins. A `.tmp`
    without its `marker` (the file written last: `state.json` in `last/`, `hsktrain.json` in
    `best/`) is a half-written one and is dropped.
    """
    old, tmp = final.with_name(final.name + ".old"), final.with_name(final.name + ".tmp")
    if not final.exists():
        if (tmp / marker).exists():
            tmp.rename(final)
        elif old.exists():
            old.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    shutil.rmtree(tmp, ignore_errors=True)


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
    rng: dict[str, torch.Tensor],
    scaler: dict | None = None,
) -> None:
    """Everything `--resume` needs to continue exactly where the run stopped.

    Args:
        state: the loop's position (JSON-able).
        rng: every rank's `rng_state`, merged.
        scaler: the fp16 GradScaler's state (empty without fp16).
    """
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, tmp / "model.safetensors")
    save_file(
        {f"p.{k}": v.contiguous() for k, v in proj.state_dict().items()} | rng,
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
            {
                "loop": state,
                "param_groups": opt_state["param_groups"],
                "scaler": scaler or {},
                "config": extra,
            },
            indent=2,
            default=str,
        )
    )
    _swap_in(tmp, folder)


def refuse_run_folder(folder: Path) -> None:
    """Refuse a run folder where a model folder is asked for (`eval`, `--init-from`), naming
    the model inside: its own config.json is the run's record, so it would be refused for what
    it is not (no safetensors weights, no tokenizer).

    Raises:
        TeacherError: `folder` holds a run (its log, best/ or last/).
    """
    marks = ("metrics.jsonl", "best/config.json", "last/state.json")
    if not any((folder / m).is_file() for m in marks):
        return
    best = folder / "best"
    hint = (
        f"did you mean {best}"
        if (best / "config.json").is_file()
        else "it keeps no best/ model (a --mode hsk run, or a sweep's run without "
        "keep_checkpoints); pass a model folder"
    )
    raise TeacherError(f"{folder}: a run folder, not a model folder; {hint}")


def read_state(folder: Path) -> dict:
    """`state.json` of a `last/` folder: the loop position, the run's record, scaler state."""
    return json.loads((folder / "state.json").read_text())


def restore_checkpoint(
    folder: Path,
    model: nn.Module,
    proj: nn.Module,
    opt: torch.optim.Optimizer | None,
    rank: int = 0,
) -> dict:
    """Restore weights, this rank's RNG (and the optimizer, when given); return `state.json`."""
    meta = read_state(folder)
    model.load_state_dict(load_file(folder / "model.safetensors"))
    extra = load_file(folder / "extra.safetensors")
    proj.load_state_dict({k[2:]: v for k, v in extra.items() if k.startswith("p.")})
    set_rng_state(extra, rank)
    if opt is not None:
        state: dict[int, dict] = {}
        path = folder / "optimizer.safetensors"
        for key, v in load_file(path).items() if path.exists() else []:
            pid, name = key.split(".", 1)
            state.setdefault(int(pid), {})[name] = v
        opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})
    return meta


def resume_point(out: Path, cfg, w: World) -> tuple[dict, dict]:
    """The saved loop state and run record of `out/last` to continue from, checked against
    `cfg` (a FitConfig) before anything is loaded or written.

    Raises:
        ConfigError: nothing to resume, a finished run, or a setting that differs from the run's.
    """
    last = out / "last"
    if w.main:  # finish a checkpoint swap a kill interrupted
        recover(last)
        recover(out / "best", "hsktrain.json")
    w.barrier()
    if not (last / "state.json").exists():
        raise ConfigError(f"{last}: nothing to resume; run without --resume")
    meta = read_state(last)
    state, saved = meta["loop"], meta["config"]
    if state.get("finished"):
        raise ConfigError(
            f"{out}: this run finished at step {state['step']}; there is nothing to resume "
            "(train a new run into another --out)"
        )
    for name in RESUME_FIELDS:
        # a run saved before group_by_length existed had it off
        was, now = saved["config"].get(name, False), getattr(cfg, name)
        if was != now:
            shown = _setting(name, now) if isinstance(now, bool) else now
            raise ConfigError(
                f"--resume: {out} was started with {_setting(name, was)}, not {shown}; resume "
                "with the same value or use another --out"
            )
    if saved.get("world_size", 1) != w.world:
        raise ConfigError(
            f"--resume: {out} was run by {saved.get('world_size', 1)} processes, not {w.world}; "
            "resume with the same --nproc-per-node"
        )
    if cfg.max_steps and state["step"] >= cfg.max_steps:
        raise ConfigError(
            f"--resume: {out} is already at step {state['step']}; raise --max-steps (or drop it)"
        )
    return state, saved


def can_resume(out: Path, cfg) -> bool:
    """Whether `out` holds an unfinished run of `cfg` (a FitConfig) with every setting equal but
    `resume` and `save_every` (how often it saves, not what it trains), so `fit` with `resume`
    continues it exactly: what a sweep killed mid-run leaves. A run of other settings, a
    finished one or no checkpoint: False (start over)."""
    last = out / "last"
    recover(last)  # a kill between a checkpoint's two renames (resume_point recovers best/)
    try:
        meta = read_state(last)
    except (OSError, ValueError):  # none, or half-written by hand
        return False
    if meta.get("loop", {}).get("finished"):
        return False
    cadence = {"resume": False, "save_every": None}
    was = meta.get("config", {}).get("config", {}) | cadence
    now = json.loads(json.dumps(replace(cfg.resolved(), **cadence).record()))
    return was == now


def _setting(name: str, value) -> str:
    """A setting as its flag: `--seed 0`; a switch as `--group-by-length` / `--no-group-...`."""
    if isinstance(value, bool):
        return flag(name) if value else "--no-" + flag(name)[2:]
    return f"{flag(name)} {value}"


def same_cache(saved: dict, record: dict) -> None:
    """Refuse resuming on another cache than the run's (compared by identity, not path)."""
    if saved.get("cache_identity") != record.get("cache_identity"):
        raise ConfigError(
            f"--resume: the run was trained on cache {str(saved.get('cache_identity'))[:12]}, "
            f"not {str(record.get('cache_identity'))[:12]} (--cache); resume with the same cache"
        )
    # A run saved before content digests were recorded has none: its identity check stands.
    if saved.get("cache_content", record.get("cache_content")) != record.get("cache_content"):
        raise ConfigError(
            "--resume: the cache has the run's identity but other content (rebuilt with other "
            "storage settings such as --chunk-rows, or altered): the resumed epoch would see "
            "other rows; resume with the cache the run started on, or start a new --out"
        )
