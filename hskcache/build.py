"""`hskcache build`: run the teacher once over a split and write the selected HSK to a cache.

Batches never straddle a shard (shard s covers rows [s*S, (s+1)*S)), so every value depends only
on its shard's rows and a resumed build recomputes exactly the bytes a straight one writes. By
default the teacher sees each shard's rows longest first (`teacher_order`), so a batch holds rows
of similar length; each batch is trimmed to its longest row before the forward (dynamic padding)
and its rows are written back at their own indices.
"""

from __future__ import annotations

import copy
import errno
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import astuple, dataclass
from pathlib import Path

import numpy as np
import torch

from hskcache.assets import asset_keys, make_kit, write_kit
from hskcache.augment import Augment, augment_rows
from hskcache.codec import dim_planes, encode_dims, encode_values, ids_dtype
from hskcache.config import BuildConfig
from hskcache.data import NO_LABEL, Columns, Examples, load_split
from hskcache.distributed import World, start
from hskcache.importance import CALIBRATION_ROWS, activation_ranking, calibration_batches
from hskcache.layout import default_chunk_rows, layer_key, plan_arrays
from hskcache.progress import progress_bar
from hskcache.record import cache_stats, make_manifest
from hskcache.storage.lock import BuildLock, LockHeldError, local_path
from hskcache.targets import Plan, plan_selection, teacher_targets
from hskcache.teacher import ClsScoreProbe, Teacher, check_max_length, load_teacher
from hskcache.tokenize import Encoded, tokenize
from hskcache.writer import ShardWriter, disk_full, finish, open_for_build, shard_done, stored_keys


def compute_batch(
    teacher: Teacher,
    probe: ClsScoreProbe | None,
    plan: Plan,
    enc: Encoded,
    labels: np.ndarray,
    lo: int,
    hi: int,
    value_dtype: str,
    device: str,
    with_logits: bool = True,
) -> dict[str, np.ndarray]:
    """Teacher forward + selection for rows [lo, hi): every stored array's rows."""
    T = int(enc.lengths[lo:hi].max())  # dynamic padding: trim to the longest row
    ids = torch.from_numpy(enc.input_ids[lo:hi, :T]).long().to(device)
    tt = torch.from_numpy(enc.token_type_ids[lo:hi, :T]).long().to(device)
    lengths = torch.from_numpy(enc.lengths[lo:hi]).to(device)
    mask = (torch.arange(T, device=device)[None, :] < lengths[:, None]).long()
    t = teacher_targets(teacher, probe, plan, ids, mask, tt)
    out = {
        "input_ids": enc.input_ids[lo:hi].astype(ids_dtype(len(teacher.tokenizer))),
        "token_type_ids": enc.token_type_ids[lo:hi],
        "lengths": enc.lengths[lo:hi],
        "labels": labels[lo:hi],
        "logits": t.logits.float().cpu().numpy(),
        "n_valid": t.n_valid.to(torch.int16).numpy(),
    }
    if not with_logits:  # task-agnostic rows: the head is no task's
        del out["logits"]
    for layer in t.layers:
        key = layer_key(layer.teacher)
        out[f"{key}/positions"] = layer.positions.to(torch.int16).numpy()
        if layer.dims is not None and layer.dims.dim() > 1:  # magnitude: ascending, as gaps
            h = teacher.config.hidden_size
            out |= {f"{key}/{k}": v for k, v in encode_dims(layer.dims.numpy(), h).items()}
        out |= {f"{key}/{k}": v for k, v in encode_values(layer.values, value_dtype).items()}
    return out


def teacher_order(lengths: np.ndarray, batch_order: str) -> np.ndarray:
    """The order in which a shard's rows go through the teacher, cut into batches of
    consecutive rows.

    `length`: longest first (ties in data order), so each batch holds rows of similar length and
    trimming it to its longest row leaves little padding; longest first also makes the first
    batch the largest, so a batch size too big for the device fails at once. `data`: the rows'
    own order. Either way a pure function of the shard's lengths, so a resumed build repeats it.
    """
    if batch_order == "data":
        return np.arange(len(lengths))
    return np.argsort(-lengths.astype(np.int64), kind="stable")


def scatter_back(parts: list[dict[str, np.ndarray]], order: np.ndarray) -> dict[str, np.ndarray]:
    """Join a shard's batches (computed in `order`) and put every row back at its own index."""
    inverse = np.argsort(order)  # row i of the shard was computed at position inverse[i]
    return {k: np.concatenate([p[k] for p in parts])[inverse] for k in parts[0]}


def build_cache(
    cfg: BuildConfig, show_progress: bool = True, timings: dict | None = None
) -> Path | str:
    """Build (or resume, or confirm) the cache that `cfg` describes; return where it is.

    `cfg.out` is a local folder or any fsspec URL (s3://, gs://, memory://). One build at a
    time writes a cache: rank 0 holds the lock at its root from start to finish.

    `timings`, when given, receives `rows` and `seconds` of the compute-and-write loop after
    its first (warm-up) batch, up to the last write (what `hsktrain bench` compares with a
    bare teacher forward).

    Returns:
        The local folder as a Path, or the URL as given for object storage.

    Raises:
        LockHeldError: another build holds the cache's lock (or took it over mid-build).
        HskError: any bad input, named; nothing is ever marked complete unless it is.
    """
    cfg.validate()
    w = start()  # torchrun's process group, when there are several ranks
    try:
        with _held_lock(cfg.out, cfg.break_lock, w) as lock:
            return _build(cfg, lock, w, show_progress, timings)
    except OSError as e:  # creating arrays, writing the kit, finishing: all resumable
        if e.errno != errno.ENOSPC:
            raise
        raise disk_full(cfg.out) from e


@dataclass
class _Work:
    """A build resolved before its store is opened: the teacher, the rows and what to write."""

    teacher: Teacher
    ex: Examples
    plan: Plan
    specs: list
    enc: Encoded  # every stored row's tokens: the source rows, then any augmented variants
    labels: np.ndarray
    kit: object
    manifest: dict
    chunk_rows: int
    shard_rows: int


def _build(
    cfg: BuildConfig,
    lock: BuildLock,
    w: World,
    show_progress: bool,
    timings: dict | None,
) -> Path | str:
    work = _resolve(cfg)
    root = local_path(cfg.out) or cfg.out  # a Path on local disk, else the URL
    group = _open_distributed(
        root, work.manifest, work.specs, work.chunk_rows, work.shard_rows, cfg.overwrite, w
    )
    if group is None:
        return root
    _write_shards(cfg, work, group, root, lock, w, show_progress, timings)
    w.barrier()  # every shard written
    if w.main:
        stats = lambda objects: cache_stats(group, work.manifest, objects)  # noqa: E731
        write_kit(group.store, work.kit)  # the same bytes again on a resume
        extra = asset_keys(work.kit.section)
        finish(group, work.manifest, work.specs, stats=stats, lock=lock, extra_keys=extra)
    w.barrier()  # no rank returns before the cache is marked complete
    return root


def _resolve(cfg: BuildConfig) -> _Work:
    """Load the rows and the teacher, plan the selection and the arrays, make the kit and the
    manifest: everything a build (or its resume) decides before writing."""
    columns = Columns(cfg.text_column, cfg.text_pair_column, cfg.label_column)
    ex = load_split(cfg.data, cfg.task, cfg.split, columns, cfg.limit)
    if cfg.labelled is not None:
        ex = ex.with_labelled(cfg.labelled)
    # task-agnostic rows: no logits array; the stored student inits get a one-label head
    num_labels = 1 if ex.label_names is None or ex.task_agnostic else len(ex.label_names)
    head = None if ex.task_agnostic else num_labels  # the teacher's own head, unused
    teacher = load_teacher(cfg.teacher, head, cfg.device, cfg.dtype, cfg.seed, cfg.amp)
    max_length = cfg.max_length or ex.task.max_length
    check_max_length(teacher, max_length)
    plan = plan_selection(
        cfg.selection,
        teacher.config.num_hidden_layers,
        teacher.config.hidden_size,
        max_length,
        cfg.value_dtype,  # magnitude width ranks |value| as stored
    )
    specs = plan_arrays(
        max_length,
        0 if ex.task_agnostic else num_labels,
        ex.label_names is None,
        [la["teacher"] for la in plan.layers],
        plan.tokens,
        plan.width,
        cfg.value_dtype,
        plan.per_token_dims,
        ids_dtype(len(teacher.tokenizer)),
        dim_planes(teacher.config.hidden_size),
    )
    # a copy encodes: encoding leaves padding/truncation state on a tokenizer, and the kit must
    # store the teacher's own (it is checked to load back identical)
    source_enc = tokenize(copy.deepcopy(teacher.tokenizer), ex, max_length)
    enc, labels, augment = _augmented(cfg, teacher, ex, source_enc)
    chunk_rows = cfg.chunk_rows or default_chunk_rows(specs, len(labels))
    shard_rows = chunk_rows * cfg.chunks_per_shard
    ranking, calibration = None, 0
    if cfg.select == "importance":  # on the build's first rows: the same on every resume
        calibration = min(CALIBRATION_ROWS, len(ex))
        ranking = activation_ranking(teacher.model, calibration_batches(teacher.model, source_enc))
    kit = make_kit(
        teacher.name,
        teacher.tokenizer,
        teacher.tokenizer_sha256,
        cfg.student,
        cfg.student_layers,
        num_labels,
        cfg.bundle_teacher,
        ranking,
        calibration,
        cfg.layer_choice,
        plan.l_top,
    )
    manifest = make_manifest(
        cfg, teacher, ex, plan, max_length, chunk_rows, shard_rows, kit.section, labels, augment
    )
    return _Work(teacher, ex, plan, specs, enc, labels, kit, manifest, chunk_rows, shard_rows)


def _augmented(cfg: BuildConfig, teacher: Teacher, ex: Examples, enc: Encoded):
    """(tokens, labels, Augment or None) of every stored row: `--augment N` adds N variants of
    each row after the source rows, unlabelled, a pure function of the seed."""
    if not cfg.augment:
        return enc, ex.labels, None
    augment = Augment(cfg.augment, cfg.seed, cfg.augment_neighbours, cfg.augment_probability)
    embeddings = teacher.model.get_input_embeddings().weight
    extra = augment_rows(enc, embeddings, teacher.tokenizer, augment)
    enc = Encoded(
        *(np.concatenate([a, b]) for a, b in zip(astuple(enc), astuple(extra), strict=True))
    )
    sentinel = np.nan if ex.label_names is None else NO_LABEL
    unlabelled = np.full(len(extra.lengths), sentinel, ex.labels.dtype)
    return enc, np.concatenate([ex.labels, unlabelled]), augment


def _write_shards(cfg, work: _Work, group, root, lock, w: World, show_progress, timings) -> None:
    """Compute and write this rank's shards not yet complete (a resume skips the rest)."""
    n, shard_rows, enc, specs = len(work.labels), work.shard_rows, work.enc, work.specs
    mine = [s for s in range(work.manifest["counts"]["num_shards"]) if s % w.world == w.rank]
    present = stored_keys(group)  # one listing: no request per shard on object storage
    todo = [s for s in mine if not shard_done(present, specs, s)]
    rows = lambda s: (s * shard_rows, min(n, (s + 1) * shard_rows))  # noqa: E731
    done_rows = sum(rows(s)[1] - rows(s)[0] for s in mine if s not in todo)
    probe_layers = {la["score_attention"] for la in work.plan.layers} - {None}
    probe = ClsScoreProbe(work.teacher.model, probe_layers) if probe_layers else None
    writer = ShardWriter(group, str(root), lock)
    name = str(root).rstrip("/").rsplit("/", 1)[-1]
    total = sum(rows(s)[1] - rows(s)[0] for s in mine)
    try:
        with progress_bar(f"build {name}", total, done_rows, show_progress) as advance:
            for s in todo:
                lo, hi = rows(s)
                # the shard's rows in teacher order; batches are consecutive rows of it
                order = teacher_order(enc.lengths[lo:hi], cfg.batch_order)
                ids, tt, lens = enc.input_ids, enc.token_type_ids, enc.lengths
                shard = Encoded(ids[lo:hi][order], tt[lo:hi][order], lens[lo:hi][order])
                shard_labels = work.labels[lo:hi][order]
                parts = []
                for b in range(0, hi - lo, cfg.batch_size):
                    e = min(hi - lo, b + cfg.batch_size)
                    parts.append(
                        compute_batch(
                            work.teacher,
                            probe,
                            work.plan,
                            shard,
                            shard_labels,
                            b,
                            e,
                            cfg.value_dtype,
                            cfg.device,
                            not work.ex.task_agnostic,
                        )
                    )
                    if timings is not None and "t0" not in timings:
                        timings.update(t0=time.perf_counter(), skip=e - b)
                    advance(e - b)
                writer.put(lo, scatter_back(parts, order))
    finally:
        writer.close()
        if probe is not None:
            probe.close()
    if timings is not None and "t0" in timings:  # from the end of the warm-up batch
        timings["rows"] = sum(rows(s)[1] - rows(s)[0] for s in todo) - timings["skip"]
        timings["seconds"] = time.perf_counter() - timings["t0"]


@contextmanager
def _held_lock(out: str, break_lock: bool, w: World) -> Iterator[BuildLock]:
    """Rank 0 takes the cache's lock for the whole build, and removes it at the end or on an
    error; the other `torchrun` ranks share it by its token (each shard write re-checks it)."""
    lock, refused = None, None
    if w.main:
        try:
            lock = BuildLock.acquire(out, break_lock)
        except LockHeldError as e:
            refused = e
    token = w.broadcast(lock.token if lock is not None else None)
    if not w.main:
        if token is None:
            raise LockHeldError(f"{out}: rank 0 could not take the cache's lock")
        lock = BuildLock(out, token)
    if refused is not None:
        raise refused
    try:
        yield lock
    finally:
        if w.main:
            lock.release()


def _open_distributed(root, manifest, specs, chunk_rows, shard_rows, overwrite, w: World):
    """Rank 0 creates or checks the store; the other `torchrun` ranks then open it."""
    root = str(root)
    group = (
        open_for_build(root, manifest, specs, chunk_rows, shard_rows, overwrite) if w.main else None
    )
    if not w.broadcast(group is not None):
        return None
    if not w.main:
        group = open_for_build(root, manifest, specs, chunk_rows, shard_rows, False)
    return group
