"""`hskcache push` / `pull` / `ls` against a real S3 API server on loopback (moto)."""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import s3fs
import zarr
from test_build import make_cfg
from typer.testing import CliRunner

from conftest import make_bert, write_sst2
from hskcache.build import build_cache
from hskcache.cli import app
from hskcache.errors import CacheError
from hskcache.manifest import MANIFEST_KEY
from hskcache.reader import open_cache
from hskcache.storage.catalog import find_caches
from hskcache.storage.transfer import pull, push
from hskcache.verify import verify_cache

runner = CliRunner()


@pytest.fixture(scope="module")
def caches(tmp_path_factory) -> dict[str, Path]:
    """Two tiny complete caches of different selections and layouts (c2: fewer shards)."""
    root = tmp_path_factory.mktemp("transfer")
    teacher, data = make_bert(root / "teacher"), write_sst2(root / "SST-2")
    c1 = build_cache(make_cfg(data, root / "c1", teacher), show_progress=False)
    c2 = build_cache(
        make_cfg(data, root / "c2", teacher, hsk="1l_2t_0.5h", chunk_rows=8), show_progress=False
    )
    return {"c1": Path(c1), "c2": Path(c2)}


def table(cache: Path) -> dict[str, dict]:
    return open_cache(cache).manifest["objects"]


def cache_files(cache: Path) -> dict[str, bytes]:
    """The bytes of every object a copy must carry: the table's keys and the root."""
    return {k: (cache / k).read_bytes() for k in [*table(cache), "zarr.json"]}


def tree(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def bucket_files(url: str) -> dict[str, bytes]:
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    base = url.removeprefix("s3://").rstrip("/") + "/"
    return {p[len(base) :]: fs.cat_file(p) for p in fs.find(base)}


def error_line(result) -> str:
    """The single output line of a refused command (exit 1), without the 'error: ' prefix."""
    assert result.exit_code == 1, result.output
    lines = [ln for ln in result.output.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    return lines[0].removeprefix("error: ")


def test_push_ls_pull_verify_round_trip(tmp_path, caches, s3_bucket):
    url = f"{s3_bucket}/team/c1"
    r = runner.invoke(app, ["push", str(caches["c1"]), url, "--quiet"])
    assert r.exit_code == 0, r.output
    assert f"complete {url}" in r.output
    assert bucket_files(url) == cache_files(caches["c1"])
    r = runner.invoke(app, ["ls", s3_bucket, "--json"])
    (entry,) = json.loads(r.output)
    m = open_cache(caches["c1"]).manifest
    assert entry["url"] == url and entry["identity"] == m["identity"]
    assert entry["status"] == "complete" and entry["rows"] == 26
    assert entry["selection"] == "1l_4t_0.25h" and entry["data"]["task"] == "sst2"
    assert entry["bytes"] == sum(len(b) for b in cache_files(caches["c1"]).values())
    r = runner.invoke(app, ["ls", s3_bucket])  # not a TTY: tab-separated, one line a cache
    head, row = r.output.splitlines()
    assert head.split("\t")[:3] == ["cache", "identity", "content"]
    assert row.split("\t")[:2] == ["team/c1", m["identity"][:12]]
    cells = row.split("\t")
    assert cells[6:8] == ["1l_4t_0.25h", "26"] and cells[-1] == "complete"
    label = f"{caches['c1'].parent.name}/teacher"  # the folder's last two parts, no abs path
    assert cells[3].split()[0] == label and m["teacher"]["name"] == label
    r = runner.invoke(app, ["ls", s3_bucket, "--json", "--match", f"teacher={label}"])
    assert [c["url"] for c in json.loads(r.output)] == [url]  # the name ls shows matches
    local = tmp_path / "pulled"
    r = runner.invoke(app, ["pull", url, str(local), "--quiet", "--jobs", "3"])
    assert r.exit_code == 0, r.output
    assert f"ok {local}" in r.output
    assert tree(local) == cache_files(caches["c1"])  # nothing else: no temp files left
    assert verify_cache(str(local)) == [] and verify_cache(url) == []
    again = pull(url, str(local), show_progress=False)
    assert again.already_there and again.copied == 0


def test_by_identity_twice_is_a_no_op(caches, s3_bucket):
    identity = open_cache(caches["c1"]).info.name  # identity + content digest
    args = ["push", "--by-identity", str(caches["c1"]), f"{s3_bucket}/ids", "--quiet"]
    first = runner.invoke(app, args)
    assert first.exit_code == 0 and "pushed" in first.output, first.output
    before = bucket_files(f"{s3_bucket}/ids/{identity}")
    assert before == cache_files(caches["c1"])
    second = runner.invoke(app, args)
    assert second.exit_code == 0, second.output
    assert f"already there {s3_bucket}/ids/{identity}" in second.output
    assert bucket_files(f"{s3_bucket}/ids/{identity}") == before


KILL_SCRIPT = """
import os, signal, sys
from hskcache.storage import transfer
calls, kill_at = [0], int(sys.argv[4])
orig = transfer.Transfer.copy_object
def copy_object(self, key, advance):
    orig(self, key, advance)
    calls[0] += 1
    if calls[0] == kill_at:  # objects copied so far are whole; the root is not written
        os.kill(os.getpid(), signal.SIGKILL)
transfer.Transfer.copy_object = copy_object
getattr(transfer, sys.argv[1])(sys.argv[2], sys.argv[3], jobs=1, show_progress=False)
"""


def run_killed(command: str, src: str, dst: str, kill_at: int) -> None:
    args = [sys.executable, "-c", KILL_SCRIPT, command, src, dst, str(kill_at)]
    proc = subprocess.run(args, capture_output=True, text=True)
    assert proc.returncode == -9, proc.stderr


def test_interrupted_push_resumes(caches, s3_bucket):
    url = f"{s3_bucket}/c1"
    kill_at = len(table(caches["c1"])) - 3
    run_killed("push", str(caches["c1"]), url, kill_at)
    left = set(bucket_files(url))
    assert left - {"hskcache.lock"} < set(table(caches["c1"])) and len(left) == kill_at + 1
    with pytest.raises(CacheError):
        open_cache(url)
    assert [c["status"] for c in find_caches(s3_bucket)] == ["partial"]
    report = push(str(caches["c1"]), url, show_progress=False)
    assert (report.skipped, report.copied) == (kill_at, 3)
    assert bucket_files(url) == cache_files(caches["c1"])
    assert verify_cache(url) == []
    assert [c["status"] for c in find_caches(s3_bucket)] == ["complete"]


def test_interrupted_pull_resumes(tmp_path, caches, s3_bucket):
    url, local = f"{s3_bucket}/c1", tmp_path / "pulled"
    push(str(caches["c1"]), url, show_progress=False)
    kill_at = 7
    run_killed("pull", url, str(local), kill_at)
    left = set(tree(local))
    assert left - {"hskcache.lock"} < set(table(caches["c1"])) and len(left) == kill_at + 1
    with pytest.raises(CacheError, match="no cache here"):
        open_cache(local)
    first = next(iter(table(caches["c1"])))  # copied first, so its folder exists
    (local / first).with_name("junk.1234.partial").write_bytes(b"torn")  # a kill mid-write
    report = pull(url, str(local), show_progress=False)
    assert (report.skipped, report.copied) == (kill_at, len(table(caches["c1"])) - kill_at)
    assert tree(local) == cache_files(caches["c1"])
    assert verify_cache(str(local)) == []


def test_corrupted_remote_object_is_named(tmp_path, caches, s3_bucket):
    url, key = f"{s3_bucket}/c1", "layers/h1/values/c/1/0/0"
    push(str(caches["c1"]), url, show_progress=False)
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    good = fs.cat_file(f"{url}/{key}")
    fs.pipe_file(f"{url}/{key}", good[::-1])  # other bytes, same length
    local = tmp_path / "pulled"
    line = error_line(runner.invoke(app, ["pull", url, str(local), "--quiet"]))
    assert line == (
        f"{url}: object '{key}' does not match its recorded sha256 (altered, or swapped with "
        f"another); not copied, and nothing was marked complete at {local}"
    )
    assert not (local / "zarr.json").exists() and not (local / key).exists()
    r = runner.invoke(app, ["verify", url, "--quiet"])
    assert r.exit_code == 1
    assert f"damaged: object '{key}' does not match its recorded sha256" in r.output


def test_ls_match_and_json(caches, s3_bucket):
    push(str(caches["c1"]), f"{s3_bucket}/a/c1", show_progress=False)
    push(str(caches["c2"]), f"{s3_bucket}/b", by_identity=True, show_progress=False)
    m1, m2 = (open_cache(caches[c]).manifest for c in ("c1", "c2"))

    def ls(*match: str) -> list[str]:
        r = runner.invoke(app, ["ls", s3_bucket, "--json", *match])
        assert r.exit_code == 0, r.output
        return [c["url"] for c in json.loads(r.output)]

    both = [f"{s3_bucket}/a/c1", f"{s3_bucket}/b/{open_cache(caches['c2']).info.name}"]
    assert ls() == both
    assert ls("--match", "hsk=1l_2t_0.5h") == both[1:]
    assert ls("--match", str(caches["c1"])) == both[:1]
    sha = m1["teacher"]["weights_sha256"][:7]
    assert ls("--match", f"task=SST-2,split=train,teacher={sha},max_length=16") == both
    assert ls("--match", "task=mrpc") == []
    assert ls("--match", f"identity={m2['identity'][:10]}") == both[1:]


def test_overwrite_replaces_another_cache(caches, s3_bucket):
    url = f"{s3_bucket}/c"
    push(str(caches["c1"]), url, show_progress=False)
    line = error_line(runner.invoke(app, ["push", str(caches["c2"]), url, "--quiet"]))
    identity = open_cache(caches["c1"]).manifest["identity"]
    assert line == (
        f"{url}: holds another cache (identity {identity[:12]}, status complete); pass "
        "--overwrite to replace it, or choose another destination"
    )
    report = push(str(caches["c2"]), url, overwrite=True, show_progress=False)
    assert report.copied > 0
    assert bucket_files(url) == cache_files(caches["c2"])  # c1's extra shards are gone
    assert verify_cache(url) == []


def test_bad_inputs_are_one_line(tmp_path, caches, s3_bucket):
    def refused(*args: str) -> str:
        return error_line(runner.invoke(app, [*args]))

    empty = tmp_path / "empty"
    empty.mkdir()
    assert refused("push", str(empty), f"{s3_bucket}/x") == (
        f"{empty}: no cache here (no zarr.json); build one with `hskcache build`"
    )
    building = tmp_path / "building"
    shutil.copytree(caches["c1"], building)
    group = zarr.open_group(building, mode="r+")
    group.attrs.update({MANIFEST_KEY: {**group.attrs[MANIFEST_KEY], "status": "building"}})
    assert refused("push", str(building), f"{s3_bucket}/x").startswith(
        f"{building}: cache is incomplete (status 'building')"
    )
    damaged = tmp_path / "damaged"
    shutil.copytree(caches["c1"], damaged)
    shard = damaged / "logits" / "c" / "0" / "0"
    shard.write_bytes(shard.read_bytes()[::-1])
    assert refused("push", str(damaged), f"{s3_bucket}/x") == (
        f"{damaged}: object 'logits/c/0/0' does not match its recorded sha256 (altered, or "
        "swapped with another); run `hskcache verify` on it, rebuild it if damaged"
    )
    assert bucket_files(s3_bucket) == {}  # refused before anything was written
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    assert refused("pull", str(caches["c1"]), str(busy)) == (
        f"{busy}: holds 1 file(s) that are not part of this cache (first: 'notes.txt'); "
        "choose an empty destination"
    )
    assert refused("push", str(caches["c1"]), f"{s3_bucket}/x", "--jobs", "0") == (
        "--jobs 0: must be >= 1"
    )
    assert refused("ls", s3_bucket, "--match", "task=sst2,colour=red") == (
        "unknown --match key 'colour'; known keys: task, split, hsk, teacher, tokenizer, data, "
        "max_length, student_layers, length, width_strategy, value_dtype, identity, content"
    )
    assert refused("ls", s3_bucket, "--match", "task=sst2,train").startswith(
        "--match 'train': expected key=value (or a cache path/URL)"
    )
    assert refused("ls", f"{s3_bucket}/nothing") == (
        f"{s3_bucket}/nothing: nothing there (no such folder, bucket or prefix)"
    )
    assert refused("push", str(caches["c1"]), "nosuch://bucket/x") == (
        "nosuch://bucket/x: unknown storage protocol (Protocol not known: nosuch); give a local "
        "path or an fsspec URL (s3://, gs://, file://, memory://)"
    )


def test_missing_protocol_package_is_named(caches):
    if importlib.util.find_spec("gcsfs"):
        pytest.skip("gcsfs is installed: gs:// needs no missing package")
    line = error_line(runner.invoke(app, ["push", str(caches["c1"]), "gs://bucket/x"]))
    assert line.startswith("gs://bucket/x: the 'gs' protocol needs a package that is not installed")


def test_memory_and_file_urls(tmp_path, caches):
    """Any fsspec URL: memory:// (no ETag: size checked, resume reads back) and file://."""
    url = f"memory://hsk-{tmp_path.name}/c1"
    push(str(caches["c1"]), url, show_progress=False)
    assert verify_cache(url) == []
    target = tmp_path / "via-file-url"
    report = pull(url, f"file://{target}", show_progress=False)
    assert report.copied == len(table(caches["c1"]))
    assert tree(target) == cache_files(caches["c1"])


def test_damaged_local_copy_is_repaired_by_overwrite(tmp_path, caches, s3_bucket):
    url, local, key = f"{s3_bucket}/c1", tmp_path / "pulled", "logits/c/2/0"
    push(str(caches["c1"]), url, show_progress=False)
    pull(url, str(local), show_progress=False)
    (local / key).write_bytes((local / key).read_bytes()[::-1])
    line = error_line(runner.invoke(app, ["pull", url, str(local), "--quiet"]))
    assert line.startswith(
        f"{local}: holds this cache but fails verify: object '{key}' does not match its "
        "recorded sha256"
    )
    report = pull(url, str(local), overwrite=True, show_progress=False)
    assert (report.copied, report.skipped) == (1, len(table(caches["c1"])) - 1)
    assert tree(local) == cache_files(caches["c1"])


def test_large_objects_stream_through_files(tmp_path, caches, s3_bucket, monkeypatch):
    """Objects above INLINE_BYTES (a bundled teacher) stream in blocks, whichever way."""
    from hskcache.storage import location as storage

    monkeypatch.setattr(storage, "INLINE_BYTES", 600)
    monkeypatch.setattr(storage, "BLOCK", 256)
    sizes = [o["bytes"] for o in table(caches["c1"]).values()]
    assert min(sizes) <= 600 < max(sizes)  # both paths taken
    url = f"{s3_bucket}/c1"
    push(str(caches["c1"]), url, show_progress=False)
    assert bucket_files(url) == cache_files(caches["c1"])
    mem = f"memory://hsk-{tmp_path.name}/c1"
    push(url, mem, show_progress=False)  # remote to remote: through a local temp file
    pull(mem, str(tmp_path / "pulled"), show_progress=False)
    assert tree(tmp_path / "pulled") == cache_files(caches["c1"])


def test_a_held_lock_refuses_a_second_writer(caches, s3_bucket):
    import socket

    from hskcache.storage.lock import BuildLock

    url = f"{s3_bucket}/c1"
    held = BuildLock.acquire(url)  # a live process (this one) writing the destination
    line = error_line(runner.invoke(app, ["push", str(caches["c1"]), url, "--quiet"]))
    assert line.startswith(f"{url}: held by pid {os.getpid()} on host {socket.gethostname()}")
    assert line.endswith(f"remove {url}/hskcache.lock or pass --break-lock")
    assert set(bucket_files(url)) == {"hskcache.lock"}
    r = runner.invoke(app, ["push", str(caches["c1"]), url, "--quiet", "--break-lock"])
    assert r.exit_code == 0, r.output
    assert bucket_files(url) == cache_files(caches["c1"])  # the lock went with the copy
    held.release()  # no longer ours: leaves nothing behind
    assert verify_cache(url) == []


def test_ls_statuses_on_a_local_folder(tmp_path, caches):
    """complete, building (root says so), partial (arrays but no root); other zarr skipped."""
    shutil.copytree(caches["c1"], tmp_path / "done")
    shutil.copytree(caches["c1"], tmp_path / "team" / "building")
    group = zarr.open_group(tmp_path / "team" / "building", mode="r+")
    group.attrs.update({MANIFEST_KEY: {**group.attrs[MANIFEST_KEY], "status": "building"}})
    shutil.copytree(caches["c1"], tmp_path / "team" / "half")
    (tmp_path / "team" / "half" / "zarr.json").unlink()
    zarr.open_group(tmp_path / "other.zarr", mode="w").create_array("x", shape=(2,), dtype="i4")
    found = {Path(c["url"]).name: c["status"] for c in find_caches(str(tmp_path))}
    assert found == {"done": "complete", "building": "building", "half": "partial"}
    r = runner.invoke(app, ["ls", str(tmp_path / "team"), "--match", "task=sst2"])
    assert r.exit_code == 0 and "no caches under" in r.output  # a fit can use neither
