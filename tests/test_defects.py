"""Defects of the bad-input campaign: a full disk at any moment of a build, a symlinked or
tampered `--out`, a damaged complete cache found again, user files inside a cache, damaged
values read unverified, and a remote cache's objects read once (and re-checked locally)."""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from pathlib import Path

import pytest
import zarr
import zarr.storage._local as zlocal
from test_build import files, make_cfg
from typer.testing import CliRunner

from hskcache.build import build_cache
from hskcache.cli import app as hskcache_app
from hskcache.config import BuildConfig
from hskcache.errors import CacheError, CacheIncompleteError, ConfigError, HskError
from hskcache.reader import open_cache
from hskcache.storage import localcache
from hskcache.storage.localcache import ShardCache
from hskcache.verify import verify_cache


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_bert):
    """One complete cache, copied by each test that damages it."""
    from conftest import write_sst2

    root = tmp_path_factory.mktemp("defects")
    data = write_sst2(root / "SST-2")
    cfg = make_cfg(data, root / "cache", tiny_bert, student_layers=2)
    build_cache(cfg, show_progress=False)
    return {"root": root, "data": data, "cache": root / "cache", "teacher": tiny_bert}


def copy_of(built, dst: Path) -> Path:
    shutil.copytree(built["cache"], dst)
    return dst


def cfg_for(built, out: Path, **kw) -> BuildConfig:
    return make_cfg(built["data"], out, built["teacher"], student_layers=2, **kw)


# ---- a full disk while creating arrays, writing the kit, and finishing ----------------------


@pytest.mark.parametrize("moment", ["arrays", "kit", "finish"])
def test_full_disk_at_any_moment_is_one_line_and_resumable(built, tmp_path, monkeypatch, moment):
    """The OS write of one key fails with ENOSPC: one line, nothing marked complete, and the
    same command finishes the cache byte-identical once space is back."""
    real_put, out = zlocal._put, tmp_path / "c"

    def full(path: Path, value, exclusive: bool = False):
        rel = Path(path).relative_to(out).as_posix()
        hit = {
            "arrays": rel == "lengths/zarr.json",  # creating the arrays
            "kit": rel.startswith("assets/"),  # writing the training kit after the shards
            "finish": rel == "zarr.json" and b'"complete"' in value.to_bytes(),
        }[moment]
        if hit:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_put(path, value, exclusive)

    monkeypatch.setattr(zlocal, "_put", full)
    with pytest.raises(HskError) as e:
        build_cache(cfg_for(built, out), show_progress=False)
    assert str(e.value) == (
        f"{out}: disk full; finished shards are kept, free space and rerun the same command "
        "to resume"
    )
    with pytest.raises(CacheIncompleteError):
        open_cache(out)
    monkeypatch.setattr(zlocal, "_put", real_put)
    build_cache(cfg_for(built, out), show_progress=False)
    assert files(out) == files(built["cache"])


def test_full_disk_while_taking_the_lock_leaves_no_empty_lock(tmp_path, monkeypatch):
    from hskcache.storage.lock import LOCK_KEY, BuildLock

    real = os.fdopen

    class Full:
        def __init__(self, fd, mode):
            self.f = real(fd, mode)

        def __enter__(self):
            return self

        def __exit__(self, *a):
            self.f.close()

        def write(self, data):
            raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fdopen", Full)
    with pytest.raises(OSError):
        BuildLock.acquire(str(tmp_path / "c"))
    assert not (tmp_path / "c" / LOCK_KEY).exists()  # was an empty lock "held by pid ?"


# ---- a symlinked --out ------------------------------------------------------------------------


def test_symlinked_out_is_refused_and_nothing_is_deleted(built, tmp_path):
    target = copy_of(built, tmp_path / "real" / "cache")
    (tmp_path / "real" / "sibling.txt").write_text("keep")
    link = tmp_path / "link"
    link.symlink_to(target)
    before = files(tmp_path / "real")
    args = ["build", "--data", str(built["data"]), "--teacher", str(built["teacher"])]
    args += ["--max-length", "16", "--hsk", "1l_4t_0.25h", "--quiet", "--overwrite"]
    r = CliRunner().invoke(hskcache_app, [*args, "--out", str(link)])
    assert r.exit_code == 1 and r.output.strip() == (
        f"error: out {link} is a symbolic link (to {target}); pass the folder itself as --out"
    ), r.output
    assert files(tmp_path / "real") == before and link.is_symlink()
    dangling = tmp_path / "dangling"
    dangling.symlink_to(tmp_path / "nowhere")  # was a FileExistsError traceback
    with pytest.raises(ConfigError, match="is a symbolic link"):
        build_cache(cfg_for(built, dangling), show_progress=False)


# ---- rebuilding over a tampered manifest ------------------------------------------------------


def edit_manifest(cache: Path, edit) -> None:
    path = cache / "zarr.json"
    doc = json.loads(path.read_text())
    edit(doc["attributes"])
    path.write_text(json.dumps(doc))


def test_tampered_manifest_is_one_line_and_deletes_nothing(built, tmp_path):
    out = copy_of(built, tmp_path / "c")
    edit_manifest(out, lambda a: a["hskcache"]["counts"].update(num_chunks="many"))
    before = files(out)
    with pytest.raises(CacheError) as e:
        build_cache(cfg_for(built, out), show_progress=False)
    assert str(e.value).startswith(f"{out}: its manifest (zarr.json) was edited or is damaged (")
    assert str(e.value).endswith(
        "pass --overwrite to rebuild the cache (only its own objects are deleted) or choose "
        "another --out"
    )
    assert "\n" not in str(e.value) and files(out) == before
    edit_manifest(out, lambda a: a.update(hskcache=[1]))  # was an AttributeError traceback
    with pytest.raises(CacheError, match="it is a list, not an object"):
        build_cache(cfg_for(built, out), show_progress=False)
    build_cache(cfg_for(built, out, overwrite=True), show_progress=False)
    assert files(out) == files(built["cache"])

    (out / "zarr.json").write_text("{not json")
    with pytest.raises(CacheError) as e:
        build_cache(cfg_for(built, out, overwrite=True), show_progress=False)
    assert str(e.value) == (
        f"{out}: its zarr.json holds no readable hskcache manifest (edited or damaged); "
        "--overwrite only replaces what it can tell is a cache: remove the folder yourself or "
        "choose another --out"
    )
    assert (out / "lengths" / "zarr.json").is_file()


# ---- rerunning build over a complete but damaged cache ----------------------------------------


def test_rerun_over_a_damaged_complete_cache_checks_sizes(built, tmp_path):
    out = copy_of(built, tmp_path / "c")
    assert build_cache(cfg_for(built, out), show_progress=False) == out  # sound: confirmed
    shard = out / "logits" / "c" / "1" / "0"
    shard.write_bytes(shard.read_bytes()[:-3])
    with pytest.raises(CacheError) as e:
        build_cache(cfg_for(built, out), show_progress=False)
    assert str(e.value) == (
        f"{out}: the cache is complete but object 'logits/c/1/0' has {shard.stat().st_size} "
        f"bytes, not {shard.stat().st_size + 3}; run `hskcache verify {out}` to see all damage, "
        "then rebuild with --overwrite"
    )
    shard.unlink()
    with pytest.raises(CacheError, match="object 'logits/c/1/0' is missing; run `hskcache"):
        build_cache(cfg_for(built, out), show_progress=False)


# ---- --overwrite keeps a user's files ---------------------------------------------------------


def test_overwrite_deletes_only_the_caches_own_objects(built, tmp_path, capsys):
    out = copy_of(built, tmp_path / "c")
    (out / "notes.txt").write_text("mine")
    (out / "lengths" / "plot.png").write_bytes(b"png")
    (out / "logits" / "c" / "README").write_text("mine too")
    (out / "logits" / "c" / "9" / "0.7f3a.partial").parent.mkdir()
    (out / "logits" / "c" / "9" / "0.7f3a.partial").write_bytes(b"half")  # a killed write's
    build_cache(cfg_for(built, out, hsk="1l_3t_0.25h", overwrite=True), show_progress=False)
    assert (out / "notes.txt").read_text() == "mine"
    assert (out / "lengths" / "plot.png").read_bytes() == b"png"
    assert (out / "logits" / "c" / "README").read_text() == "mine too"
    assert not (out / "logits" / "c" / "9").exists()
    assert "--overwrite kept 3 file(s) that are not the cache's own: lengths/plot.png, " in (
        capsys.readouterr().err
    )
    assert open_cache(out).manifest["selection"]["tokens"] == 3 and verify_cache(str(out)) == []


# ---- fit --no-verify on damaged values --------------------------------------------------------


@pytest.mark.parametrize(
    ("array", "value", "bounds"),
    [
        ("lengths", 99, "1..16"),  # was a size mismatch deep in attention
        ("input_ids", 5000, "0..88"),  # was "index out of range in self" in the embedding
        ("layers/h1/positions", 40, "-1..15"),  # was an index error in the HSK gather
    ],
)
def test_fit_no_verify_names_a_damaged_array_and_chunk(built, tmp_path, array, value, bounds):
    from hsktrain.config import FitConfig
    from hsktrain.train import fit

    out = copy_of(built, tmp_path / "c")
    a = zarr.open_array(out / array, mode="r+")
    rows = a[:]
    rows[10] = value  # row 10 sits in chunk 2 (4-row chunks); the shard's crc32c stays valid
    a[:] = rows
    cfg = FitConfig(
        out=str(tmp_path / "run"), cache=str(out), student="tiny", verify=False, batch_size=8
    )
    with pytest.raises(CacheError) as e:
        fit(cfg, show_progress=False)
    assert str(e.value) == (
        f"{out}: array '{array}' chunk 2: values outside {bounds} (damaged); run "
        f"`hskcache verify {out}`"
    )


# ---- a remote cache: verify through the local copy, local copies re-checked -------------------


def test_fit_verify_of_a_remote_cache_downloads_each_object_once(
    built, tmp_path, s3_bucket, monkeypatch
):
    from hskcache import reader, verify
    from hskcache.storage import objects
    from hsktrain.config import FitConfig
    from hsktrain.train import fit

    url = f"{s3_bucket}/c"
    build_cache(cfg_for(built, url), show_progress=False)
    gets: dict[str, int] = {}
    real = objects.read_object

    def counted(store, key):
        gets[key] = gets.get(key, 0) + 1
        return real(store, key)

    for module in (objects, reader, verify):
        monkeypatch.setattr(module, "read_object", counted)
    cfg = FitConfig(
        out=str(tmp_path / "run"),
        cache=url,
        student="tiny",
        mode="hsk",
        hsk_epochs=1,
        batch_size=8,
        local_cache=str(tmp_path / "lc"),
    )
    fit(cfg, show_progress=False)
    table = open_cache(url, local_cache=tmp_path / "lc").manifest["objects"]
    assert set(gets) == set(table)  # verify read every object ...
    assert max(gets.values()) == 1  # ... once: training read the verified local copies


def test_local_copy_altered_after_download_is_downloaded_again(tmp_path, monkeypatch):
    blob = b"shard bytes"
    table = {"a/c/0": {"bytes": len(blob), "sha256": hashlib.sha256(blob).hexdigest()}}
    sc = ShardCache(tmp_path, 1000, "f" * 64, table, {"a/c/0": blob}.get)
    path = sc.path("a/c/0")
    path.write_bytes(b"shard BYTES")  # same size: a size-only check took it
    monkeypatch.setattr(localcache, "_CHECKED", set(), raising=False)  # a new process
    assert sc.path("a/c/0").read_bytes() == blob and sc.remote_fetches == 2
    assert sc.path("a/c/0") == path and sc.remote_fetches == 2  # checked once per process


def test_fit_full_disk_raised_by_safetensors_is_one_line(built, tmp_path, monkeypatch):
    """A real full disk reaches `fit` as safetensors' own error type, not an OSError."""
    from safetensors import SafetensorError

    from hsktrain import checkpoint
    from hsktrain.config import FitConfig
    from hsktrain.train import fit

    def full(*a, **k):
        raise SafetensorError(
            "Error while serializing: I/O error: No space left on device (os error 28)"
        )

    monkeypatch.setattr(checkpoint, "save_file", full)
    out = tmp_path / "run"
    cfg = FitConfig(out=str(out), cache=str(built["cache"]), student="tiny", batch_size=8)
    with pytest.raises(HskError) as e:
        fit(cfg, show_progress=False)
    assert str(e.value) == (
        f"{out}: disk full; last/ holds the last complete checkpoint: free space and rerun with "
        "--resume"
    )


def test_range_bounds_come_from_the_stored_config_without_transformers(built, tiny_mpnet):
    """The id bounds read from a transformers-5 config (every family field written) equal the
    family class's own, for a family with segment ids (BERT) and one without (MPNet); reading a
    chunk then imports no transformers."""
    import subprocess
    import sys

    from hskcache.rowcheck import _vocab_sizes

    bert = dict(open_cache(built["cache"]).manifest["teacher"]["config"])
    mpnet = json.loads((tiny_mpnet / "config.json").read_text())
    for family, config in (("bert", bert), ("mpnet", mpnet)):
        old = {**config, "transformers_version": "4.48.0"}  # filled in by the family's class
        assert _vocab_sizes(family, json.dumps(config)) == _vocab_sizes(family, json.dumps(old))
    assert _vocab_sizes("bert", json.dumps(bert))[1] == 2
    assert _vocab_sizes("mpnet", json.dumps(mpnet)) == (mpnet["vocab_size"], 1)
    code = (
        "import sys, hskcache; c = hskcache.open_cache(sys.argv[1]); c.read_chunk(0); "
        "print('transformers' in sys.modules)"
    )
    run = subprocess.run(
        [sys.executable, "-c", code, str(built["cache"])], capture_output=True, text=True
    )
    assert run.stdout.strip() == "False", run.stderr[-1000:]
