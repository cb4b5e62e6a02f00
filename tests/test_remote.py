"""Caches on object storage (a real S3 server on loopback): build straight to s3://, resume,
read through the bounded local shard copy, fit with zero remote reads once warm, and the lock
that keeps one writer per cache."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
import zarr.core.array as za
from test_build import files, make_cfg

from hskcache.build import build_cache
from hskcache.errors import CacheError, CacheIncompleteError, ConfigError
from hskcache.reader import open_cache
from hskcache.storage.localcache import ShardCache, parse_size
from hskcache.storage.lock import LOCK_KEY, BuildLock, LockHeldError
from hskcache.verify import verify_cache


def s3fs_():
    import s3fs

    return s3fs.S3FileSystem(skip_instance_cache=True)


def s3_files(url: str) -> dict[str, bytes]:
    fs, base = s3fs_(), url[len("s3://") :]
    return {k[len(base) + 1 :]: fs.cat_file(k) for k in fs.find(base)}


def shard_keys(url: str) -> list[str]:
    return [f"{url}/{k}" for k in s3_files(url) if "/c/" in k]


def test_build_to_s3_equals_local_and_reads_through_local_copy(
    tmp_path, sst2_dir, tiny_bert, s3_bucket
):
    local = build_cache(make_cfg(sst2_dir, tmp_path / "local", tiny_bert), show_progress=False)
    url = f"{s3_bucket}/c"
    assert build_cache(make_cfg(sst2_dir, url, tiny_bert), show_progress=False) == url
    assert s3_files(url) == files(local)  # every object, manifest (and stats) included; no lock
    assert verify_cache(url) == []

    want = open_cache(local)
    cache = open_cache(url, local_cache=tmp_path / "lc")
    assert cache.memory_mapped and want.remote_fetches == 0
    n = cache.num_examples
    ref = want.read(0, n)
    for k, v in cache.read(0, n).items():
        assert np.array_equal(v, ref[k]), k
    shards = shard_keys(url)
    assert cache.remote_fetches == len(shards)  # each shard downloaded once, whole

    s3fs_().rm(shards)  # the bucket stops serving the data: later passes are local only
    for k, v in cache.read(0, n).items():
        assert np.array_equal(v, ref[k]), k
    assert cache.remote_fetches == len(shards)
    fresh = open_cache(url, local_cache=tmp_path / "lc")  # another process, same folder
    fresh.read(0, n)
    assert fresh.remote_fetches == 0


READ_SCRIPT = """
import hashlib, sys
from hskcache.reader import open_cache
cache = open_cache(sys.argv[1], local_cache=sys.argv[2], local_cache_size=sys.argv[3])
h = hashlib.sha256()
for _ in range(3):
    for i in range(cache.num_chunks):
        for k, v in sorted(cache.read_chunk(i).items()):
            h.update(v.tobytes())
print(h.hexdigest())
"""


def test_processes_sharing_a_local_copy(tmp_path, sst2_dir, tiny_bert, s3_bucket):
    """Two readers at once on one folder, with a limit small enough to evict all the time."""
    local = build_cache(make_cfg(sst2_dir, tmp_path / "local", tiny_bert), show_progress=False)
    url = f"{s3_bucket}/c"
    build_cache(make_cfg(sst2_dir, url, tiny_bert), show_progress=False)
    want, ref = hashlib.sha256(), open_cache(local)
    for _ in range(3):
        for i in range(ref.num_chunks):
            for _k, v in sorted(ref.read_chunk(i).items()):
                want.update(v.tobytes())
    args = [sys.executable, "-c", READ_SCRIPT, url, str(tmp_path / "shared"), "3000"]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert outs == [want.hexdigest()] * 2
    assert not list((tmp_path / "shared").rglob("*.tmp"))  # no torn or abandoned writes


def test_compressed_remote_cache_decodes_from_local_copy(tmp_path, sst2_dir, tiny_bert, s3_bucket):
    local = build_cache(
        make_cfg(sst2_dir, tmp_path / "z", tiny_bert, compressor="zstd"), show_progress=False
    )
    url = f"{s3_bucket}/z"
    build_cache(make_cfg(sst2_dir, url, tiny_bert, compressor="zstd"), show_progress=False)
    cache = open_cache(url, local_cache=tmp_path / "lc")
    assert not cache.memory_mapped
    ref = open_cache(local).read(0, cache.num_examples)
    for k, v in cache.read(0, cache.num_examples).items():
        assert np.array_equal(v, ref[k]), k
    fetched = cache.remote_fetches
    s3fs_().rm(shard_keys(url))
    cache.read(0, cache.num_examples)
    assert cache.remote_fetches == fetched > 0


def test_interrupted_s3_build_resumes_identical(tmp_path, sst2_dir, tiny_bert, s3_bucket):
    local = build_cache(make_cfg(sst2_dir, tmp_path / "local", tiny_bert), show_progress=False)
    url = f"{s3_bucket}/c"
    orig, calls = za.Array.__setitem__, [0]

    def fail_after_a_while(self, key, value):
        calls[0] += 1
        if calls[0] > 12:
            raise OSError("connection reset")
        return orig(self, key, value)

    za.Array.__setitem__ = fail_after_a_while
    try:
        with pytest.raises(OSError, match="connection reset"):
            build_cache(make_cfg(sst2_dir, url, tiny_bert), show_progress=False)
    finally:
        za.Array.__setitem__ = orig
    partial = s3_files(url)
    assert LOCK_KEY not in partial  # removed on error
    assert 0 < sum("/c/" in k for k in partial) < sum("/c/" in k for k in files(local))
    with pytest.raises(CacheIncompleteError):
        open_cache(url)
    build_cache(make_cfg(sst2_dir, url, tiny_bert), show_progress=False)  # shards present = done
    assert s3_files(url) == files(local)


def test_local_copy_evicts_least_recently_used(tmp_path):
    blobs = {k: bytes([i]) * 100 for i, k in enumerate(["a/c/0", "a/c/1", "a/c/2"])}
    table = {k: {"bytes": 100, "sha256": hashlib.sha256(v).hexdigest()} for k, v in blobs.items()}
    sc = ShardCache(tmp_path, 250, "f" * 64, table, blobs.get)
    a = sc.path("a/c/0")
    sc.path("a/c/1")
    time.sleep(0.02)
    assert sc.path("a/c/0") == a  # a hit: used again, so now the most recent
    time.sleep(0.02)
    sc.path("a/c/2")  # 300 bytes > 250: the least recently used (a/c/1) goes
    assert sorted(p.name for p in sc.dir.rglob("*") if p.is_file()) == ["0", "2"]
    assert sc.remote_fetches == 3
    sc.path("a/c/1", keep=[a])  # a/c/0 is in use by this read: a/c/2 goes instead
    assert sorted(p.name for p in sc.dir.rglob("*") if p.is_file()) == ["0", "1"]
    tiny = ShardCache(tmp_path / "t", 1, "f" * 64, table, blobs.get)
    tiny.path("a/c/0")  # larger than the whole limit: kept while it is being read
    assert (tiny.dir / "a/c/0").is_file()


def test_local_copy_refuses_a_damaged_object(tmp_path):
    table = {"a/c/0": {"bytes": 3, "sha256": hashlib.sha256(b"abc").hexdigest()}}
    sc = ShardCache(tmp_path, 1000, "f" * 64, table, lambda k: b"abd")
    with pytest.raises(CacheError, match="'a/c/0' downloaded does not match its recorded sha256"):
        sc.path("a/c/0")
    assert not any(p.is_file() for p in tmp_path.rglob("*"))  # nothing half-trusted is kept


def test_parse_size():
    assert parse_size("10GB") == 10**10
    assert parse_size("10GiB") == 10 * 2**30
    assert parse_size("1.5 MB") == 1_500_000
    assert parse_size("512") == parse_size(512) == 512
    with pytest.raises(ConfigError, match="local_cache_size 'ten' is not a size; give bytes"):
        parse_size("ten")
    with pytest.raises(ConfigError, match="local_cache_size must be positive, got 0"):
        parse_size("0")


def test_fit_from_s3_second_epoch_reads_nothing_remote(
    tmp_path, sst2_dir, tiny_bert, s3_bucket, monkeypatch
):
    from hsktrain.config import FitConfig
    from hsktrain.train import fit

    url = f"{s3_bucket}/c"
    build_cache(make_cfg(sst2_dir, url, tiny_bert, student_layers=2), show_progress=False)
    made: list[ShardCache] = []
    init = ShardCache.__init__

    def record(self, *a, **kw):
        init(self, *a, **kw)
        made.append(self)

    monkeypatch.setattr(ShardCache, "__init__", record)
    kw = dict(cache=url, student="tiny", mode="hsk", hsk_epochs=2, batch_size=8)
    kw |= dict(local_cache=str(tmp_path / "lc"), local_cache_size="1GB")
    fit(FitConfig(out=str(tmp_path / "run1"), **kw), show_progress=False)
    n_objects = len(s3_files(url)) - 1  # all but the root zarr.json (the manifest)
    # verify fetched every object once into the local copy; two epochs read only that copy
    assert sum(c.remote_fetches for c in made) == n_objects and made[-1].remote_fetches == 0

    s3fs_().rm(shard_keys(url))  # epochs of a new run need nothing remote either
    fit(FitConfig(out=str(tmp_path / "run2"), verify=False, **kw), show_progress=False)
    assert made[-1].remote_fetches == 0


def test_local_cache_flags_apply_to_remote_caches_only(tmp_path):
    from hsktrain.config import FitConfig

    with pytest.raises(ConfigError, match="--local-cache: only with a remote --cache"):
        FitConfig(out=str(tmp_path / "o"), cache=str(tmp_path), local_cache="x").validate()
    with pytest.raises(ConfigError, match="--local-cache-size: local_cache_size 'lots' is not"):
        FitConfig(out="o", cache="s3://b/c", local_cache_size="lots").validate()


# --- one writer per cache -------------------------------------------------------------------

PAUSE_SCRIPT = """
import json, sys, time
from pathlib import Path
import zarr.core.array as za
from hskcache.build import build_cache
from hskcache.config import BuildConfig
flag, calls, orig = Path(sys.argv[2]), [0], za.Array.__setitem__
def setitem(self, key, value):
    calls[0] += 1
    if calls[0] == 20:  # some shards written: pause until the test says go
        (flag / "paused").write_text("")
        while not (flag / "go").exists():
            time.sleep(0.05)
    return orig(self, key, value)
za.Array.__setitem__ = setitem
build_cache(BuildConfig(**json.loads(sys.argv[1])), show_progress=False)
"""


def test_second_writer_is_refused_while_a_build_holds_the_cache(tmp_path, sst2_dir, tiny_bert):
    """Build A pauses after some shards; build B (another --length, --overwrite) is refused;
    A resumes and completes alone: no mixed cache is ever marked complete."""
    out = tmp_path / "c"
    a = make_cfg(sst2_dir, out, tiny_bert, length="attention")
    proc = subprocess.Popen(
        [sys.executable, "-c", PAUSE_SCRIPT, json.dumps(a.__dict__), str(tmp_path)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        deadline = time.time() + 60
        while not (tmp_path / "paused").exists():
            assert proc.poll() is None and time.time() < deadline, proc.stderr.read()
            time.sleep(0.05)
        b = make_cfg(sst2_dir, out, tiny_bert, length="left", overwrite=True)
        with pytest.raises(LockHeldError) as e:
            build_cache(b, show_progress=False)
        assert str(e.value).startswith(
            f"{out}: held by pid {proc.pid} on host {socket.gethostname()} since "
        )
        assert str(e.value).endswith(
            f"; if that build is dead, remove {out}/{LOCK_KEY} or pass --break-lock"
        )
    finally:
        (tmp_path / "go").write_text("")
        assert proc.wait(120) == 0, proc.stderr.read()
    cache = open_cache(out)
    assert cache.manifest["selection"]["length"] == "attention"
    assert verify_cache(str(out)) == []
    assert not (out / LOCK_KEY).exists()


def test_build_that_lost_its_lock_never_marks_complete(tmp_path, sst2_dir, tiny_bert):
    out = tmp_path / "c"
    orig, calls = za.Array.__setitem__, [0]

    def taken_over(self, key, value):  # another build breaks the lock mid-way
        calls[0] += 1
        if calls[0] == 12:
            theirs = {"host": "h2", "pid": 7, "token": "x", "started": "t0"}
            (out / LOCK_KEY).write_text(json.dumps(theirs))
        return orig(self, key, value)

    za.Array.__setitem__ = taken_over
    try:
        with pytest.raises(LockHeldError) as e:
            build_cache(make_cfg(sst2_dir, out, tiny_bert), show_progress=False)
        assert str(e.value) == (
            f"{out}: this build no longer holds the cache's lock (now held by pid 7 on host h2 "
            "since t0); another build may be writing it: nothing was marked complete, rerun "
            "once that build is done"
        )
    finally:
        za.Array.__setitem__ = orig
    with pytest.raises(CacheIncompleteError):
        open_cache(out)
    assert json.loads((out / LOCK_KEY).read_text())["token"] == "x"  # theirs: left alone


def test_stale_and_foreign_locks(tmp_path, sst2_dir, tiny_bert, capsys):
    out = tmp_path / "c"
    out.mkdir()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    holder = {"host": socket.gethostname(), "pid": dead.pid, "token": "t", "started": "then"}
    (out / LOCK_KEY).write_text(json.dumps(holder))
    build_cache(make_cfg(sst2_dir, out, tiny_bert), show_progress=False)
    assert f"taking over the lock of pid {dead.pid}" in capsys.readouterr().err
    assert verify_cache(str(out)) == [] and not (out / LOCK_KEY).exists()

    other = {"host": "elsewhere", "pid": os.getpid(), "token": "t", "started": "then"}
    (out / LOCK_KEY).write_text(json.dumps(other))
    with pytest.raises(LockHeldError, match=f"held by pid {os.getpid()} on host elsewhere"):
        build_cache(make_cfg(sst2_dir, out, tiny_bert, overwrite=True), show_progress=False)
    build_cache(make_cfg(sst2_dir, out, tiny_bert, break_lock=True), show_progress=False)
    assert "as asked (--break-lock)" in capsys.readouterr().err
    assert not (out / LOCK_KEY).exists()


def test_lock_on_object_storage(s3_bucket):
    url = f"{s3_bucket}/c"
    first = BuildLock.acquire(url)
    with pytest.raises(LockHeldError, match=f"{url}: held by pid {os.getpid()} on host "):
        BuildLock.acquire(url)
    first.check()
    first.release()
    assert LOCK_KEY not in s3_files(url)
    BuildLock.acquire(url).release()


def test_refused_build_leaves_no_empty_folder(tmp_path, sst2_dir, tiny_bert):
    from hskcache.errors import HskError

    out = tmp_path / "new"
    with pytest.raises(HskError):  # refused after the lock was taken
        build_cache(make_cfg(tmp_path / "missing", out, tiny_bert), show_progress=False)
    assert not out.exists()


def test_overwrite_on_object_storage(tmp_path, sst2_dir, tiny_bert, s3_bucket):
    from hskcache.errors import CacheMismatchError

    s3fs_().pipe_file(f"{s3_bucket[5:]}/notes/readme.txt", b"keep me")
    with pytest.raises(CacheError, match="notes: exists and is not an hskcache cache"):
        build_cache(make_cfg(sst2_dir, f"{s3_bucket}/notes", tiny_bert, overwrite=True))
    assert s3_files(f"{s3_bucket}/notes") == {"readme.txt": b"keep me"}

    url = f"{s3_bucket}/c"
    build_cache(make_cfg(sst2_dir, url, tiny_bert, length="left"), show_progress=False)
    with pytest.raises(CacheMismatchError, match="pass --overwrite"):
        build_cache(make_cfg(sst2_dir, url, tiny_bert), show_progress=False)
    build_cache(make_cfg(sst2_dir, url, tiny_bert, overwrite=True), show_progress=False)
    assert open_cache(url).manifest["selection"]["length"] == "attention-no-sep"
    assert verify_cache(url) == [] and LOCK_KEY not in s3_files(url)
