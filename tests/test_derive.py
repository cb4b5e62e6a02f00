"""`hskcache derive`: every exact cut equals a direct build byte for byte; the rest is refused.

The teacher is a tiny 4-layer BERT (default l_top 3): a 2-layer student's hidden states pair with
teacher states 0, 2 and 3, each scored by its own attention layer, so layer cuts are real cuts.
Derived and direct caches share chunk_rows and batch_size, i.e. the same teacher batches.
"""

from __future__ import annotations

import json
from pathlib import Path

import fsspec
import pytest
from typer.testing import CliRunner

import hskcache.derive as derive_mod
from conftest import make_bert, write_sst2
from hskcache.build import build_cache
from hskcache.cli import app
from hskcache.config import BuildConfig, DeriveConfig
from hskcache.derive import derive_cache
from hskcache.errors import CacheMismatchError, ConfigError
from hskcache.manifest import MANIFEST_KEY
from hskcache.reader import open_cache
from hskcache.verify import verify_cache

BASE = dict(
    split="dev", student_layers=2, max_length=16, chunk_rows=4, chunks_per_shard=2, batch_size=3
)


@pytest.fixture(scope="module")
def kit(tmp_path_factory):
    """Data, a 4-layer teacher, and a memo of direct builds (each built once per module)."""
    root = tmp_path_factory.mktemp("derive")
    data, teacher = write_sst2(root / "SST-2"), make_bert(root / "bert4", layers=4)
    built: dict[str, Path] = {}

    def build(hsk: str, **kw) -> Path:
        key = json.dumps([hsk, kw], sort_keys=True)
        if key not in built:
            out = root / f"build-{len(built)}"
            cfg = BuildConfig(
                data=str(data), out=str(out), teacher=str(teacher), hsk=hsk, **{**BASE, **kw}
            )
            built[key] = Path(build_cache(cfg, show_progress=False))
        return built[key]

    return root, build


def derive(src, out, hsk: str, **kw):
    cfg = DeriveConfig(src=str(src), out=str(out), hsk=hsk, chunk_rows=4, chunks_per_shard=2, **kw)
    return derive_cache(cfg, show_progress=False)


def objects(url) -> dict[str, bytes]:
    """Every object of a cache (local folder or fsspec URL) but the root zarr.json, which holds
    the manifest."""
    fs, path = fsspec.core.url_to_fs(str(url))
    fs.invalidate_cache()
    path = path.rstrip("/")
    keys = sorted(k[len(path) + 1 :] for k in fs.find(path))
    return {k: fs.cat_file(f"{path}/{k}") for k in keys if k != "zarr.json"}


def manifest(url) -> dict:
    fs, path = fsspec.core.url_to_fs(str(url))
    fs.invalidate_cache()
    return json.loads(fs.cat_file(f"{path.rstrip('/')}/zarr.json"))["attributes"][MANIFEST_KEY]


def assert_same_as_direct(derived, direct, parent) -> None:
    """Byte-identical objects; manifests equal but for `derived_from`, which names the parent.

    Teacher, tokenizer, data, build settings and assets are the parent's, which are the direct
    build's too (same teacher, data and batch size); identity, stats and the objects table are
    computed from what was written, so they must agree as well.
    """
    got, want = objects(derived), objects(direct)
    assert sorted(got) == sorted(want)
    assert [k for k in want if got[k] != want[k]] == []
    m, d = manifest(derived), manifest(direct)
    assert m.pop("derived_from") == {
        "identity": manifest(parent)["identity"],
        "source": str(parent),
        "selection": manifest(parent)["selection"]["name"],
    }
    assert "derived_from" not in d
    assert m == d
    # the parent's training kit (tokenizer, student init...) came along byte for byte
    assets = {k: v for k, v in objects(parent).items() if k.startswith("assets/")}
    assert assets and {k: got[k] for k in assets} == assets
    assert m["assets"] == manifest(parent)["assets"]
    assert set(assets) <= set(m["objects"])
    assert verify_cache(str(derived), False) == []


PARENT = "3l_8t_0.5h"  # magnitude, 16 of 32 dims, float16


@pytest.mark.parametrize(
    ("hsk", "kw"),
    [
        ("3l_4t_0.5h", {}),  # fewer tokens: a prefix, n_valid clipped
        ("3l_8t_0.25h", {}),  # less magnitude width: re-ranked from the stored fp16 values
        ("2l_8t_0.5h", {}),  # fewer layers: the top two (teacher states 2, 3)
        ("1l_3t_0.1h", {}),  # all three at once
        ("3l_8t_0.5h", {"value_dtype": "int8"}),  # float16 -> int8
        ("1l_4t_0.25h", {"value_dtype": "int8"}),
        ("2l_6t_0.5h", {"compressor": "zstd"}),
    ],
)
def test_derived_equals_direct_build(kit, hsk, kw):
    root, build = kit
    parent = build(PARENT)
    out = derive(parent, root / f"d-{hsk}-{sorted(kw.items())}", hsk, **kw)
    assert_same_as_direct(out, build(hsk, **kw), parent)


def test_depth_cut_keeps_the_top_student_layers(kit):
    root, build = kit
    out = derive(build(PARENT), root / "d-depth", "1l_8t_0.5h")
    assert manifest(out)["layers"] == [{"student": 2, "teacher": 3, "score_attention": 2}]


@pytest.mark.parametrize(
    ("parent", "pkw", "hsk", "kw"),
    [
        # uniform 0.5 keeps dims 0, 2, ..., 30; uniform 0.25 keeps 0, 4, ..., 28: a subset
        ("2l_8t_0.5h", {"width_strategy": "uniform"}, "2l_8t_0.25h", {}),
        # a random mask of p is a prefix of the same seed's mask of any larger p
        ("2l_8t_0.5h", {"width_strategy": "random"}, "1l_4t_0.25h", {}),
        # full width holds every dim: any fixed mask, any dtype cut
        ("3l_8t_1h", {}, "2l_8t_0.3h", {"width_strategy": "uniform"}),
        ("3l_8t_1h", {}, "1l_8t_0.25h", {"width_strategy": "random", "value_dtype": "int8"}),
        # the full HSK (all states, all tokens in order) -> left tokens
        ("full", {}, "2l_5t_1h", {"length": "left"}),
        # depth settings default to the source's (here l_top 4: states 0, 2, 4), or are given
        ("3l_8t_0.5h", {"l_top": 4}, "2l_4t_0.5h", {}),
        ("2l_8t_0.5h", {"teacher_layers": [2, 3]}, "1l_8t_0.5h", {"teacher_layers": [3]}),
        # int8 -> int8 at the same width: the same tokens' values and scales
        ("3l_8t_0.5h", {"value_dtype": "int8"}, "1l_4t_0.5h", {"value_dtype": "int8"}),
        ("3l_8t_0.5h", {"value_dtype": "bfloat16"}, "2l_2t_0.5h", {"value_dtype": "bfloat16"}),
        # a narrower magnitude width re-ranks the stored values as a build ranks the teacher's:
        # |value| in the storage dtype, ties to the lower dim; from bf16, and from every dim
        ("3l_8t_0.5h", {"value_dtype": "bfloat16"}, "2l_4t_0.25h", {"value_dtype": "bfloat16"}),
        ("3l_8t_1h", {}, "3l_8t_0.25h", {}),
        ("3l_8t_1h", {}, "1l_6t_0.5h", {"value_dtype": "int8"}),
        ("3l_8t_1h", {"value_dtype": "bfloat16"}, "2l_8t_0.25h", {"value_dtype": "bfloat16"}),
    ],
)
def test_fixed_masks_full_and_other_dtypes(kit, parent, pkw, hsk, kw):
    root, build = kit
    src = build(parent, **pkw)
    out = derive(src, root / f"d-{parent}-{sorted(pkw.items())}-{hsk}", hsk, **kw)
    direct_kw = {**pkw, **kw}
    if parent == "full":  # what the parent recorded: `full` picks tokens left to right
        direct_kw["length"] = "left"
    assert_same_as_direct(out, build(hsk, **direct_kw), src)


def test_uniform_width_is_the_official_mask_in_a_cache(kit):
    _, build = kit
    m = manifest(build("3l_8t_1h"))
    assert m["selection"]["width_kept"] == 32
    m = manifest(build("2l_8t_0.3h", width_strategy="uniform"))
    assert m["width_dims"] == [0, 3, 7, 10, 13, 17, 20, 23, 27]  # int(9.6) = 9 dims
    assert m["selection"]["width_kept"] == 9
    cache = open_cache(build("2l_8t_0.3h", width_strategy="uniform"))
    assert cache.read_chunk(0)["layers/h3/values"].shape[-1] == 9


def test_chain_of_derives(kit):
    root, build = kit
    parent = build(PARENT)
    middle = derive(parent, root / "chain-1", "2l_6t_0.375h")
    last = derive(middle, root / "chain-2", "1l_3t_0.25h")
    assert_same_as_direct(last, build("1l_3t_0.25h"), middle)
    assert manifest(middle)["derived_from"]["identity"] == manifest(parent)["identity"]


def test_default_chunking_is_the_builds(kit):
    root, build = kit
    parent = build(PARENT)
    cfg = DeriveConfig(src=str(parent), out=str(root / "d-default"), hsk="1l_4t_0.25h")
    out = Path(derive_cache(cfg, show_progress=False))
    want = build("1l_4t_0.25h", chunk_rows=None, chunks_per_shard=8)
    # the direct build ran its batches in another shard layout than the parent: compare only
    # what does not depend on it
    assert manifest(out)["storage"] == manifest(want)["storage"]
    assert manifest(out)["identity"] == manifest(want)["identity"]


def test_resume_after_a_crash_is_byte_identical(kit, monkeypatch):
    root, build = kit
    parent = build(PARENT)
    straight = derive(parent, root / "resume-straight", "1l_4t_0.25h")
    real, calls = derive_mod.cut_rows, []

    def crash_on_third(*args):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args)

    monkeypatch.setattr(derive_mod, "cut_rows", crash_on_third)
    out = root / "resume"
    with pytest.raises(KeyboardInterrupt):
        derive(parent, out, "1l_4t_0.25h")
    assert manifest(out)["status"] == "building"
    monkeypatch.setattr(derive_mod, "cut_rows", real)
    derive(parent, out, "1l_4t_0.25h")
    assert objects(out) == objects(straight)
    assert manifest(out) == {**manifest(straight), "derived_from": manifest(out)["derived_from"]}


def test_other_settings_into_an_existing_derive_are_refused(kit):
    root, build = kit
    parent = build(PARENT)
    out = derive(parent, root / "d-again", "1l_4t_0.25h")
    with pytest.raises(CacheMismatchError) as e:
        derive(parent, out, "1l_3t_0.25h")
    assert str(e.value) == (
        "cache mismatch on 'selection.name': expected '1l_3t_0.25h', found '1l_4t_0.25h'; this "
        "--out holds a cache built with other settings; pass --overwrite to replace it or "
        "choose another --out"
    )
    derive(parent, out, "1l_3t_0.25h", overwrite=True)
    assert manifest(out)["selection"]["tokens_kept"] == 3


REBUILD = "build it with the teacher instead"
REFUSALS = [
    (
        PARENT,
        {},
        "3l_10t_0.5h",
        {},
        "cannot derive '3l_10t_0.5h': 10 tokens asked but the source stores 8 per example; "
        f"ask for at most 8 or {REBUILD}",
    ),
    (
        PARENT,
        {},
        "3l_4t_0.5h",
        {"length": "attention"},
        "cannot derive '3l_4t_0.5h': the source's tokens were picked by 'attention-no-sep', "
        f"not 'attention'; keep --length attention-no-sep or {REBUILD}",
    ),
    (
        "1l_8t_0.5h",
        {},
        "2l_8t_0.5h",
        {},
        "cannot derive '2l_8t_0.5h': teacher hidden state 2 (student layer 1) is not in the "
        "source, which stores [3]; pick layers among those (--l-top/--teacher-layers) or "
        f"{REBUILD}",
    ),
    (
        PARENT,
        {},
        "1l_8t_0.5h",
        {"l_top": 4},
        "cannot derive '1l_8t_0.5h': teacher hidden state 4 (student layer 2) is not in the "
        "source, which stores [0, 2, 3]; pick layers among those (--l-top/--teacher-layers) or "
        f"{REBUILD}",
    ),
    (
        PARENT,
        {},
        "1l_8t_0.5h",
        {"score_layer": "uniform"},
        "cannot derive '1l_8t_0.5h': hidden state 3's tokens were scored by attention layer 2, "
        f"not 3; keep --score-layer producing or {REBUILD}",
    ),
    (
        PARENT,
        {},
        "3l_8t_0.75h",
        {},
        "cannot derive '3l_8t_0.75h': 24 dims asked but the source keeps 16 per token; ask for "
        f"at most 0.5 of the width or {REBUILD}",
    ),
    (
        PARENT,
        {},
        "3l_8t_1h",
        {},
        "cannot derive '3l_8t_1h': a full width needs those dims for every token; the source "
        f"keeps 16 magnitude dims per token; {REBUILD}",
    ),
    (
        PARENT,
        {},
        "3l_8t_0.25h",
        {"width_strategy": "uniform"},
        "cannot derive '3l_8t_0.25h': a fixed width needs those dims for every token; the "
        f"source keeps 16 magnitude dims per token; {REBUILD}",
    ),
    (
        "2l_8t_0.5h",
        {"width_strategy": "uniform"},
        "2l_8t_0.25h",
        {"width_strategy": "magnitude"},
        "cannot derive '2l_8t_0.25h': magnitude width needs every token's largest |values|, the "
        "source keeps a fixed 'uniform' mask; derive from a magnitude or full-width cache or "
        f"{REBUILD}",
    ),
    (
        PARENT,
        {"value_dtype": "int8"},
        "1l_4t_0.25h",
        {},
        "cannot derive '1l_4t_0.25h': a narrower magnitude width is ranked by |value| in "
        "float16, which int8 values no longer hold; derive it from the float16 cache or "
        f"{REBUILD}",
    ),
    (
        "3l_8t_1h",
        {"value_dtype": "int8"},
        "3l_8t_0.25h",
        {},
        "cannot derive '3l_8t_0.25h': a narrower magnitude width is ranked by |value| in "
        "float16, which int8 values no longer hold; derive it from the float16 cache or "
        f"{REBUILD}",
    ),
    (
        # 0, 2, ..., 30 kept; 0.3 needs 0, 3, 7, 10, 13, 17, 20, 23, 27: six are odd
        "2l_8t_0.5h",
        {"width_strategy": "uniform"},
        "2l_8t_0.3h",
        {},
        "cannot derive '2l_8t_0.3h': the 'uniform' mask needs dims the source does not keep "
        "(6 of 9, first [3, 7, 13]); derive a mask that is a subset of the source's or "
        f"{REBUILD}",
    ),
    (
        "2l_8t_0.5h",
        {"width_strategy": "random"},
        "2l_8t_0.25h",
        {"width_strategy": "uniform"},
        None,  # message depends on the random mask: checked by its start
    ),
    (
        "3l_8t_0.5h",
        {"value_dtype": "bfloat16"},
        "3l_8t_0.5h",
        {"value_dtype": "float16"},
        "cannot derive '3l_8t_0.5h': bfloat16 values cannot be converted to float16 exactly "
        f"(only float16 -> int8 can); keep --value-dtype bfloat16 or {REBUILD}",
    ),
    (
        PARENT,
        {},
        "3l_8t_0.5h",
        {"value_dtype": "bfloat16"},
        "cannot derive '3l_8t_0.5h': float16 values cannot be converted to bfloat16 exactly "
        f"(only float16 -> int8 can); keep --value-dtype float16 or {REBUILD}",
    ),
    (
        "3l_8t_1h",
        {"value_dtype": "int8"},
        "3l_8t_0.5h",
        {"width_strategy": "uniform"},
        "cannot derive '3l_8t_0.5h': int8 scales are per token over the kept dims, so a "
        f"narrower fixed mask changes them; derive from a float16 cache or {REBUILD}",
    ),
]


@pytest.mark.parametrize(("parent", "pkw", "hsk", "kw", "msg"), REFUSALS)
def test_refusals_name_the_reason(kit, parent, pkw, hsk, kw, msg):
    root, build = kit
    src = build(parent, **pkw)
    out = root / "refused"
    with pytest.raises(ConfigError) as e:
        derive(src, out, hsk, **kw)
    if msg is None:
        assert str(e.value).startswith(f"cannot derive '{hsk}': the 'uniform' mask needs dims")
    else:
        assert str(e.value) == msg
    assert not out.exists()  # refused before anything is written


def test_cli_derive_and_its_one_line_error(kit):
    root, build = kit
    parent = build(PARENT)
    runner = CliRunner()
    out = root / "cli"
    r = runner.invoke(app, ["derive", str(parent), str(out), "--hsk", "1l_4t_0.25h", "--quiet"])
    assert r.exit_code == 0, r.output
    assert "complete" in r.output and "1l_4t_0.25h from 3l_8t_0.5h" in r.output
    assert manifest(out)["derived_from"]["identity"] == manifest(parent)["identity"]
    r = runner.invoke(app, ["derive", str(parent), str(root / "cli2"), "--hsk", "1l_9t_0.25h"])
    assert r.exit_code == 1
    assert r.output.strip().splitlines() == [
        "error: cannot derive '1l_9t_0.25h': 9 tokens asked but the source stores 8 per "
        f"example; ask for at most 8 or {REBUILD}"
    ]


@pytest.mark.parametrize("store", ["memory", "s3"])
def test_derive_from_and_to_object_storage(kit, store, request):
    """A source and a destination on object storage (the loopback S3 server, or fsspec's
    in-process memory filesystem) give the same objects as local builds."""
    root, build = kit
    base = request.getfixturevalue("s3_bucket") if store == "s3" else f"memory://{root.name}"
    teacher, data = str(root / "bert4"), str(root / "SST-2")
    parent = f"{base}/parent"
    cfg = BuildConfig(data=data, out=parent, teacher=teacher, hsk=PARENT, **BASE)
    build_cache(cfg, show_progress=False)
    assert objects(parent) == objects(build(PARENT))
    local = derive(parent, root / f"from-{store}", "1l_3t_0.25h")
    remote = derive(parent, f"{base}/derived", "1l_3t_0.25h")
    assert remote == f"{base}/derived"
    for out in (local, remote):
        assert_same_as_direct(out, build("1l_3t_0.25h"), parent)


def test_out_over_or_inside_the_source_is_refused(kit):
    root, build = kit
    parent = build(PARENT)
    for out in (parent, parent / "sub", parent.parent):
        with pytest.raises(ConfigError) as e:
            derive(parent, out, "1l_4t_0.25h", overwrite=True)
        assert str(e.value) == (
            f"derive would write {out} over or inside its source {parent}; choose another --out"
        )
    assert verify_cache(str(parent), False) == []
