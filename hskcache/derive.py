"""`hskcache derive`: cut a smaller cache out of a larger one, with no teacher.

A cache stores tokens best first and keys each distilled layer by its teacher hidden state, so
fewer layers (a subset), fewer tokens (a prefix) or a narrower fixed mask (a subset of columns)
are exact cuts of what is stored. A build ranks magnitude dims by |value| as stored (float16 or
bfloat16, ties to the lower dim), so a narrower magnitude width is the same ranking rerun on the
stored values of a wider magnitude cache or of a full-width one. The derived cache is the one
a direct build of the same config writes: the same identity, arrays and bytes, given the same
row batches in the build (the parent's batch size, batch order, device, dtype and shard
boundaries; they are recorded in the manifest's `build` and `storage`). Whatever cannot be
cut exactly is refused with the reason, before anything is written.

Writes go through the builder's writer (whole shards, resumable, `complete` last); the source is
read through `open_cache`, so any URL the reader opens can be a source.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from zarr.core.buffer import default_buffer_prototype
from zarr.core.sync import sync

from hskcache import __version__
from hskcache.codec import decode_dims, decode_values, encode_dims, encode_values
from hskcache.config import DeriveConfig
from hskcache.errors import CacheError, ConfigError
from hskcache.hsk import SelectionConfig
from hskcache.layout import default_chunk_rows, layer_key
from hskcache.manifest import ManifestView, compute_identity
from hskcache.names import check_key
from hskcache.progress import progress_bar
from hskcache.reader import Cache, open_cache, specs_for
from hskcache.record import cache_stats, selection_fields
from hskcache.selection import top_k_ascending
from hskcache.storage.lock import BuildLock, local_path
from hskcache.storage.objects import read_object
from hskcache.targets import Plan, plan_selection
from hskcache.writer import ShardWriter, finish, open_for_build, shard_done, stored_keys

ASSET_PREFIX = "assets/"  # objects a cache carries besides its arrays (tokenizer, student init)
# Value dtype changes that reproduce a direct build bit for bit: an int8 build quantises the
# float16-rounded values, so a float16 cache holds everything an int8 one is made from.
DTYPE_CUTS = {("float16", "int8")}


@dataclass(frozen=True)
class Cut:
    """How each stored array of the source becomes the derived one."""

    tokens: int  # K: a prefix of the source's positions
    width: slice | np.ndarray  # columns of the source's values: all, or a fixed-mask subset
    per_token_dims: bool  # magnitude: dims stored per token
    rank: int | None  # magnitude: keep this many of the stored dims, re-ranked by |value|
    layers: list[int]  # teacher hidden states kept
    requantise: bool  # float16 -> int8


def selection_of(src: ManifestView, cfg: DeriveConfig) -> SelectionConfig:
    """The selection settings of the derived cache: the flags given, the source's otherwise."""
    sel = src.selection
    explicit_depth = cfg.l_top is not None or bool(cfg.teacher_layers)
    return SelectionConfig(
        hsk=cfg.hsk,
        length=cfg.length or sel.length,
        width_strategy=cfg.width_strategy or sel.width_strategy,
        seed=sel.seed,  # it also seeded a missing head: the logits are the source's
        # the source's: its student inits (assets) are for that depth
        student_layers=sel.student_layers,
        l_top=cfg.l_top if explicit_depth else sel.l_top,
        teacher_layers=list(cfg.teacher_layers)
        if explicit_depth
        else list(sel.teacher_layers or []),
        score_layer=cfg.score_layer or sel.score_layer,
    )


def plan_cut(src: ManifestView, cfg: DeriveConfig) -> tuple[Plan, SelectionConfig, Cut]:
    """Resolve the derived selection and check it can be cut exactly from `src`.

    Raises:
        ConfigError: one line naming the first thing the source cannot provide exactly.
    """
    sel = selection_of(src, cfg)
    t = src.teacher
    plan = plan_selection(sel, t.num_hidden_layers, t.hidden_size, src.max_length)
    have = src.selection

    def why(reason: str, fix: str) -> ConfigError:
        return ConfigError(f"cannot derive '{plan.hsk.name}': {reason}; {fix}")

    rebuild = "build it with the teacher instead"

    if plan.hsk.length != have.length:
        raise why(
            f"the source's tokens were picked by '{have.length}', not '{plan.hsk.length}'",
            f"keep --length {have.length} or {rebuild}",
        )
    if plan.tokens > have.tokens_kept:
        raise why(
            f"{plan.tokens} tokens asked but the source stores {have.tokens_kept} per example",
            f"ask for at most {have.tokens_kept} or {rebuild}",
        )
    stored = {la.teacher: la for la in src.layers}
    for la in plan.layers:
        got = stored.get(la["teacher"])
        if got is None:
            raise why(
                f"teacher hidden state {la['teacher']} (student layer {la['student']}) is not "
                f"in the source, which stores {sorted(stored)}",
                f"pick layers among those (--l-top/--teacher-layers) or {rebuild}",
            )
        if got.score_attention != la["score_attention"]:
            raise why(
                f"hidden state {la['teacher']}'s tokens were scored by attention layer "
                f"{got.score_attention}, not {la['score_attention']}",
                f"keep --score-layer {have.score_layer} or {rebuild}",
            )
    width, rank = _width_cut(src, plan, why, rebuild)
    dtypes = (src.storage.value_dtype, cfg.value_dtype or src.storage.value_dtype)
    if dtypes[0] != dtypes[1] and dtypes not in DTYPE_CUTS:
        raise why(
            f"{dtypes[0]} values cannot be converted to {dtypes[1]} exactly (only float16 -> "
            "int8 can)",
            f"keep --value-dtype {dtypes[0]} or {rebuild}",
        )
    same_dims = isinstance(width, slice) and width.stop == have.width_kept and rank is None
    if dtypes == ("int8", "int8") and not same_dims and plan.per_token_dims:
        raise why(
            "a narrower magnitude width is ranked by |value| in float16, which int8 values "
            "no longer hold",
            f"derive it from the float16 cache or {rebuild}",
        )
    if dtypes == ("int8", "int8") and not same_dims:
        raise why(
            "int8 scales are per token over the kept dims, so a narrower fixed mask changes them",
            f"derive from a float16 cache or {rebuild}",
        )
    cut = Cut(
        plan.tokens,
        width,
        plan.per_token_dims,
        rank,
        [la["teacher"] for la in plan.layers],
        dtypes[0] != dtypes[1],
    )
    return plan, sel, cut


def _width_cut(
    src: ManifestView, plan: Plan, why, rebuild: str
) -> tuple[slice | np.ndarray, int | None]:
    """Columns of the source's values that make the derived width, and for a narrower magnitude
    width how many of them to keep by |value| (None: the columns as they are)."""
    h = src.teacher.hidden_size
    have_w = src.selection.width_kept
    src_dims = src.width_dims
    full = src_dims is None and have_w == h
    if full:
        src_dims = list(range(h))  # full width: every dim, in order
    # A build ranks |value| rounded to the storage dtype, ties to the lower dim: a total order,
    # so the top k of the stored top W (or of every dim) are the top k of the teacher's state.
    if plan.per_token_dims:
        if src_dims is not None and not full:
            raise why(
                "magnitude width needs every token's largest |values|, the source keeps a fixed "
                f"'{src.selection.width_strategy}' mask",
                f"derive from a magnitude or full-width cache or {rebuild}",
            )
        if plan.width > have_w:
            raise why(
                f"{plan.width} dims asked but the source keeps {have_w} per token",
                f"ask for at most {have_w / h:g} of the width or {rebuild}",
            )
        return slice(0, have_w), None if plan.width == have_w else plan.width
    want = list(range(h)) if plan.width_dims is None else plan.width_dims.tolist()
    if src_dims is None:
        raise why(
            f"a {'full' if plan.width == h else 'fixed'} width needs those dims for every token; "
            f"the source keeps {have_w} magnitude dims per token",
            rebuild,
        )
    where = {d: i for i, d in enumerate(src_dims)}
    missing = [d for d in want if d not in where]
    if missing:
        raise why(
            f"the '{plan.hsk.width_strategy}' mask needs dims the source does not keep "
            f"({len(missing)} of {len(want)}, first {missing[:3]})",
            f"derive a mask that is a subset of the source's or {rebuild}",
        )
    index = np.array([where[d] for d in want], dtype=np.int64)
    if np.array_equal(index, np.arange(len(index))):
        return slice(0, len(index)), None
    return index, None


def derived_manifest(
    src: Cache, cfg: DeriveConfig, plan: Plan, sel: SelectionConfig, chunk_rows: int
) -> dict:
    """The source's manifest with the derived selection and storage, and its parent named.

    Teacher, tokenizer, data, max length, build settings and any other section (assets) are
    the source's: the values were computed by that teacher with those settings.
    """
    m = src.info
    n = m.counts.num_examples
    shard_rows = chunk_rows * cfg.chunks_per_shard
    out = {
        **src.manifest,
        "tool_version": __version__,
        "status": "building",
        **selection_fields(plan, sel),
        "storage": {
            "value_dtype": cfg.value_dtype or m.storage.value_dtype,
            "compressor": cfg.compressor or m.storage.compressor,
            "chunk_rows": chunk_rows,
            "shard_rows": shard_rows,
            "ids_dtype": m.storage.ids_dtype,  # the same tokenizer's ids
        },
        "counts": {
            **src.manifest["counts"],  # the rows are the source's: so are their counts
            "num_examples": n,
            "num_chunks": -(-n // chunk_rows),
            "num_shards": -(-n // shard_rows),
        },
        "stats": None,
        "objects": None,
        "derived_from": {
            "identity": m.identity,
            "source": src.url,
            "selection": m.selection.name,
        },
    }
    out["identity"] = compute_identity(out)
    return out


def cut_rows(src: Cache, cut: Cut, lo: int, hi: int) -> dict[str, np.ndarray]:
    """Rows [lo, hi) of every derived array, from the source's rows."""
    copied = ["input_ids", "token_type_ids", "lengths", "labels", "logits", "n_valid"]
    if src.info.data.task_agnostic:  # HSK only: no logits array
        copied.remove("logits")
    wanted = copied + [name for t in cut.layers for name in src.layer_fields(t).values()]
    a = src.read(lo, hi, wanted)
    out = {k: a[k] for k in copied}
    out["n_valid"] = np.minimum(a["n_valid"], cut.tokens).astype(np.int16)
    K, h = cut.tokens, src.info.teacher.hidden_size
    for t in cut.layers:
        f = src.layer_fields(t)
        key = layer_key(t)
        out[f"{key}/positions"] = a[f["positions"]][:, :K]
        values = a[f["values"]][:, :K][..., cut.width]  # (n, K, W)
        if cut.per_token_dims:
            if "dims" in f:  # (n, K, W) ascending
                high = a[f["dims_hi"]][:, :K] if "dims_hi" in f else None
                dims = decode_dims(a[f["dims"]][:, :K], high)
            else:  # a full-width source: every dim, in order
                dims = np.broadcast_to(np.arange(h), values.shape)
            if cut.rank is not None:  # rank the stored values as a build ranks the teacher's
                dense = torch.from_numpy(decode_values(src.manifest, values, None))
                kind = src.info.storage.value_dtype
                idx = top_k_ascending(dense, cut.rank, kind).numpy()  # (n, K, w)
                values = np.take_along_axis(values, idx, -1)
                dims = np.take_along_axis(dims, idx, -1)
            out |= {f"{key}/{k}": v for k, v in encode_dims(dims, h).items()}
        if cut.requantise:  # decode exactly (float16 -> float32), quantise as a build does
            dense = torch.from_numpy(decode_values(src.manifest, values, None))
            out |= {f"{key}/{k}": v for k, v in encode_values(dense, "int8").items()}
            continue
        out[f"{key}/values"] = values
        if "scales" in f:
            out[f"{key}/scales"] = a[f["scales"]][:, :K]
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def copy_assets(src: Cache, group) -> list[str]:
    """Copy every `assets/` object of the source byte for byte (tokenizer, student init, ...),
    whatever the manifest's `assets` section names; return their keys."""
    proto = default_buffer_prototype()
    keys = sorted(k for k in src.info.objects or {} if k.startswith(ASSET_PREFIX))
    for key in keys:
        data = read_object(src.group.store, check_key(key, src.url))
        if data is None:
            raise CacheError(f"{src.url}: object '{key}' is missing; run `hskcache verify`")
        sync(group.store.set(key, proto.buffer.from_bytes(data)))
    return keys


def check_locations(src: str, out: str) -> None:
    """Refuse an --out that is, holds or sits inside the source: --overwrite would delete it.

    Raises:
        ConfigError: naming both locations.
    """

    def parts(url: str) -> tuple[str, ...]:
        local = local_path(url)
        where = str(local.resolve()) if local is not None else url
        return tuple(p for p in where.split("/") if p)

    a, b = parts(src), parts(out)
    if a[: len(b)] == b or b[: len(a)] == a:
        raise ConfigError(
            f"derive would write {out} over or inside its source {src}; choose another --out"
        )


def derive_cache(cfg: DeriveConfig, show_progress: bool = True) -> Path | str:
    """Write (or resume, or confirm) the cache `cfg` derives from its source; return where it
    is (a Path on local disk, else the URL).

    Raises:
        HskError: a source that is missing or incomplete, a cut that is not exact (one line
            naming why), an --out holding another cache, or a lock held by another writer.
    """
    cfg.validate()
    check_locations(cfg.src, cfg.out)
    src = open_cache(cfg.src)
    plan, sel, cut = plan_cut(src.info, cfg)
    specs = specs_for(ManifestView.from_dict(derived_manifest(src, cfg, plan, sel, 1)))
    chunk_rows = cfg.chunk_rows or default_chunk_rows(specs, src.num_examples)  # as build does
    manifest = derived_manifest(src, cfg, plan, sel, chunk_rows)
    lock = BuildLock.acquire(cfg.out, cfg.break_lock)
    try:
        return _write(src, cut, manifest, specs, cfg, lock, show_progress)
    finally:
        lock.release()


def _write(src, cut, manifest, specs, cfg, lock, show_progress) -> Path | str:
    root = local_path(cfg.out) or cfg.out
    group = open_for_build(str(root), manifest, specs, *_rows(manifest), cfg.overwrite)
    if group is None:
        return root  # already complete
    n, shard_rows = manifest["counts"]["num_examples"], manifest["storage"]["shard_rows"]
    rows = lambda s: (s * shard_rows, min(n, (s + 1) * shard_rows))  # noqa: E731
    present = stored_keys(group)
    todo = [s for s in range(manifest["counts"]["num_shards"]) if not shard_done(present, specs, s)]
    done = n - sum(rows(s)[1] - rows(s)[0] for s in todo)
    name = str(root).rstrip("/").rsplit("/", 1)[-1]
    writer = ShardWriter(group, str(root), lock)
    try:
        with progress_bar(f"derive {name}", n, done, show_progress) as advance:
            for s in todo:
                lo, hi = rows(s)
                writer.put(lo, cut_rows(src, cut, lo, hi))
                advance(hi - lo)
    finally:
        writer.close()
    assets = copy_assets(src, group)  # the same bytes again on a resume
    stats = lambda objects: cache_stats(group, manifest, objects)  # noqa: E731
    finish(group, manifest, specs, stats=stats, lock=lock, extra_keys=assets)
    return root


def _rows(manifest: dict) -> tuple[int, int]:
    return manifest["storage"]["chunk_rows"], manifest["storage"]["shard_rows"]
