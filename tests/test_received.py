"""A received cache is data: nothing its manifest names is written, read or deleted outside its
folder; equal names mean equal bytes; a refusal deletes nothing; a dead server is one line."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import s3fs
from test_build import make_cfg
from typer.testing import CliRunner

from conftest import write_sst2
from hskcache.build import build_cache
from hskcache.cli import app
from hskcache.errors import ConfigError, UnsafeNameError
from hskcache.names import bad_key, check_manifest_names, inside
from hskcache.reader import open_cache
from hskcache.storage.localcache import ShardCache
from hskcache.storage.location import locate
from hskcache.storage.transfer import pull, push
from hskcache.verify import verify_cache
from hsktrain.cli import app as train_app
from hsktrain.config import FitConfig
from hsktrain.train import fit

runner = CliRunner()


@pytest.fixture(scope="module")
def good(tmp_path_factory, tiny_bert) -> dict[str, Path]:
    """Two complete caches of one teacher: `a` bundles the teacher, `b` has another selection."""
    root = tmp_path_factory.mktemp("received")
    data = write_sst2(root / "SST-2")
    a = build_cache(
        make_cfg(data, root / "a", tiny_bert, student_layers=2, bundle_teacher=True),
        show_progress=False,
    )
    b = build_cache(make_cfg(data, root / "b", tiny_bert, hsk="1l_2t_0.5h"), show_progress=False)
    return {"a": Path(a), "b": Path(b), "data": data, "teacher": tiny_bert}


def manifest_of(cache: Path) -> dict:
    return json.loads((cache / "zarr.json").read_text())["attributes"]["hskcache"]


def write_manifest(cache: Path, m: dict) -> None:
    doc = json.loads((cache / "zarr.json").read_text())
    doc["attributes"]["hskcache"] = m
    (cache / "zarr.json").write_text(json.dumps(doc))


def files_under(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


# ---- the validator itself ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "key",
    ["../x", "a/../../x", "/etc/passwd", "a//b", "./a", "a/.", "C:/x", "a\\..\\b", "", "a b"],
)
def test_unsafe_keys_are_named(key):
    assert bad_key(key) is not None
    with pytest.raises(UnsafeNameError, match="refused: nothing a cache names may leave"):
        check_manifest_names({"objects": {key: {}}}, "c")


@pytest.mark.parametrize(
    "key", ["zarr.json", "layers/h4/values/c/0/0/0", "assets/tokenizer/vocab.txt", ".x/y"]
)
def test_every_key_a_build_writes_is_safe(key):
    assert bad_key(key) is None


def test_inside_refuses_a_symlink_out(tmp_path):
    (tmp_path / "root").mkdir()
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "root" / "link").symlink_to(tmp_path / "elsewhere")
    assert inside(tmp_path / "root", "a/b", "c") == tmp_path / "root" / "a" / "b"
    with pytest.raises(UnsafeNameError, match="resolves outside"):
        inside(tmp_path / "root", "link/x", "c")


def test_every_materialisation_checks_the_name(tmp_path):
    """The storage layer, the local shard cache and every folder unpacking refuse on their own,
    whatever reached them (defence behind the manifest check)."""
    with pytest.raises(UnsafeNameError):
        locate(str(tmp_path)).path("../x")
    with pytest.raises(UnsafeNameError):
        locate("memory://bucket/c").path("a/../../x")
    sc = ShardCache(tmp_path / "sc", 100, "n", {"../../x": {"bytes": 1, "sha256": "0"}}, {}.get)
    with pytest.raises(UnsafeNameError):
        sc.path("../../x")
    assert files_under(tmp_path) == set()


# ---- crafted caches: every traversal vector, every command that reads a manifest -------------


def _object_key(m: dict, key: str) -> None:
    m["objects"][key] = next(iter(m["objects"].values()))


def _tokenizer_name(m: dict, name: str) -> None:
    tok = m["assets"]["tokenizer"]
    tok[name] = tok.pop(sorted(tok)[0])


def _teacher_bundle_name(m: dict, name: str) -> None:
    bundle = m["assets"]["teacher"]
    weights = next(n for n in bundle if n.endswith(".safetensors"))
    bundle[name] = bundle.pop(weights)


def _asset_key(m: dict, key: str) -> None:
    tok = m["assets"]["tokenizer"]
    name = sorted(tok)[0]
    m["objects"][key] = m["objects"].pop(tok[name])
    tok[name] = key


VECTORS = {
    "object key ../../": (_object_key, "../../escaped"),
    "object key, ../ then absolute": (_object_key, "../../../../../../../../tmp/escaped"),
    "tokenizer file name ../": (_tokenizer_name, "../escaped"),
    "tokenizer file name absolute": (_tokenizer_name, "/tmp/hsk-escaped"),
    "teacher bundle name ../": (_teacher_bundle_name, "../escaped.safetensors"),
    "asset key assets/../../": (_asset_key, "assets/../../escaped"),
}


@pytest.fixture(params=list(VECTORS), ids=list(VECTORS))
def crafted(request, good, tmp_path) -> dict:
    """A copy of cache `a` (under tmp/src/) whose manifest carries one traversal vector; the
    identity still matches (it covers no names), so only the name check can stop it."""
    edit, name = VECTORS[request.param]
    src = tmp_path / "src" / "crafted"
    shutil.copytree(good["a"], src)
    m = manifest_of(src)
    edit(m, name)
    write_manifest(src, m)
    out = tmp_path / "out"
    out.mkdir()
    return {"src": src, "out": out, "name": name, "before": files_under(tmp_path)}


def _refused(result, name: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert repr(name) in lines[0] and "nothing a cache names may leave its folder" in lines[0]


@pytest.mark.parametrize(
    "command",
    [
        ["verify", "{src}"],
        ["inspect", "{src}"],
        ["pull", "{src}", "{out}/pulled", "--quiet"],
        ["push", "{src}", "{out}/pushed", "--quiet"],
        ["push", "--by-identity", "{src}", "{out}", "--quiet"],
        ["derive", "{src}", "{out}/derived", "--hsk", "1l_2t_0.25h"],
        ["export-teacher", "{src}", "{out}/teacher"],
    ],
    ids=lambda c: c[0] + ("-by-identity" if "--by-identity" in c else ""),
)
def test_crafted_names_are_refused_by_hskcache(crafted, command):
    args = [a.format(src=crafted["src"], out=crafted["out"]) for a in command]
    _refused(runner.invoke(app, args), crafted["name"])
    assert files_under(crafted["src"].parents[1]) == crafted["before"]  # nothing written


def test_crafted_names_are_refused_by_fit(crafted):
    out = crafted["out"] / "run"
    args = ["fit", "--cache", str(crafted["src"]), "--out", str(out), "--student", "tiny"]
    _refused(runner.invoke(train_app, args), crafted["name"])
    assert files_under(crafted["src"].parents[1]) == crafted["before"]


def test_crafted_names_on_s3_are_refused_by_pull_and_fit(good, s3_bucket, tmp_path):
    """The same vector from object storage: `pull` and `fit --cache s3://` (its local shard
    cache) write nothing anywhere."""
    url = f"{s3_bucket}/crafted"
    push(str(good["a"]), url, show_progress=False)
    m = manifest_of(good["a"])
    _object_key(m, "../../escaped")
    doc = json.loads((good["a"] / "zarr.json").read_text())
    doc["attributes"]["hskcache"] = m
    s3fs.S3FileSystem(skip_instance_cache=True).pipe_file(
        f"{url.removeprefix('s3://')}/zarr.json", json.dumps(doc).encode()
    )
    work = tmp_path / "work"
    work.mkdir()
    _refused(runner.invoke(app, ["pull", url, str(work / "a" / "b"), "--quiet"]), "../../escaped")
    fit_args = ["fit", "--cache", url, "--local-cache", str(work / "lc" / "x")]
    fit_args += ["--out", str(work / "run"), "--student", "tiny"]
    _refused(runner.invoke(train_app, fit_args), "../../escaped")
    assert files_under(tmp_path) == {"work"}


def test_overwrite_never_deletes_what_the_old_manifest_names_outside(good, tmp_path):
    """`pull --overwrite` deletes the old cache's objects as its own table names them: a name
    leaving the folder is refused before anything is deleted."""
    dest = tmp_path / "dest"
    pull(str(good["b"]), str(dest), show_progress=False)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    m = manifest_of(dest)
    m["objects"]["../victim.txt"] = {"bytes": 7, "sha256": "0" * 64}
    write_manifest(dest, m)
    before = files_under(dest)
    r = runner.invoke(app, ["pull", str(good["a"]), str(dest), "--overwrite", "--quiet"])
    _refused(r, "../victim.txt")
    assert victim.read_text() == "keep me" and files_under(dest) == before


def test_refused_overwrite_leaves_the_old_cache_whole(good, tmp_path):
    """A destination also holding a foreign file is refused before the old root is deleted."""
    dest = tmp_path / "dest"
    pull(str(good["b"]), str(dest), show_progress=False)
    (dest / "notes.txt").write_text("mine")
    before = {p: (dest / p).read_bytes() for p in files_under(dest) if (dest / p).is_file()}
    r = runner.invoke(app, ["pull", str(good["a"]), str(dest), "--overwrite", "--quiet"])
    assert r.exit_code == 1 and "holds 1 file(s) that are not part of this cache" in r.output
    assert {p: (dest / p).read_bytes() for p in before} == before
    assert verify_cache(str(dest), show_progress=False) == []


# ---- equal names mean equal bytes ---------------------------------------------------------------


def _swap_two_chunks(cache: Path) -> None:
    """Swap two equal-sized shard files of one array and their entries in the objects table:
    each still passes its own checksum and the table, so verify alone cannot tell."""
    m = manifest_of(cache)
    shards = sorted(k for k in m["objects"] if "/values/c/" in k)
    a, b = next(
        (x, y)
        for x in shards
        for y in shards
        if x < y
        and x.rsplit("/c/", 1)[0] == y.rsplit("/c/", 1)[0]
        and m["objects"][x]["sha256"] != m["objects"][y]["sha256"]
        and m["objects"][x]["bytes"] == m["objects"][y]["bytes"]
    )
    ba, bb = (cache / a).read_bytes(), (cache / b).read_bytes()
    (cache / a).write_bytes(bb)
    (cache / b).write_bytes(ba)
    m["objects"][a], m["objects"][b] = m["objects"][b], m["objects"][a]
    write_manifest(cache, m)


def test_swapped_chunks_change_the_name(good, tmp_path):
    poisoned = tmp_path / "poisoned"
    shutil.copytree(good["a"], poisoned)
    _swap_two_chunks(poisoned)
    assert verify_cache(str(poisoned), show_progress=False) == []  # integrity holds ...
    ok, bad = open_cache(good["a"]).info, open_cache(poisoned).info
    assert ok.identity == bad.identity  # ... and the knowledge's name is the same ...
    assert ok.content != bad.content and ok.name != bad.name  # ... but not the bytes' name
    shared = tmp_path / "shared"
    push(str(good["a"]), str(shared), by_identity=True, show_progress=False)
    push(str(poisoned), str(shared), by_identity=True, show_progress=False)
    assert sorted(p.name for p in shared.iterdir()) == sorted([ok.name, bad.name])
    r = runner.invoke(app, ["ls", str(shared), "--json", "--match", f"content={ok.content[:12]}"])
    assert [c["url"] for c in json.loads(r.output)] == [f"{shared}/{ok.name}"]


def test_content_digest_ignores_only_provenance(good, tmp_path):
    """Two byte-identical caches made from other paths share a name; other storage does not."""
    a = manifest_of(good["a"])
    moved = json.loads(json.dumps(a))
    moved["teacher"]["name"], moved["data"]["source"], moved["tool_version"] = "x", "y", "9"
    from hskcache.manifest import content_digest

    assert content_digest(moved) == content_digest(a)
    moved["storage"]["chunk_rows"] += 1
    assert content_digest(moved) != content_digest(a)


def test_resume_on_a_rebuilt_cache_is_refused(good, tmp_path):
    """Rebuilt with another --chunk-rows, a cache keeps its identity but not its content: the
    resumed epoch would see other rows, so --resume refuses it."""
    rebuilt = build_cache(
        make_cfg(
            good["data"],
            tmp_path / "rebuilt",
            good["teacher"],
            student_layers=2,
            bundle_teacher=True,
            chunk_rows=2,
        ),
        show_progress=False,
    )
    assert open_cache(rebuilt).info.identity == open_cache(good["a"]).info.identity
    run = dict(out=str(tmp_path / "run"), student="tiny", hsk_epochs=1, pred_epochs=1)
    fit(FitConfig(cache=str(good["a"]), batch_size=4, max_steps=2, **run), show_progress=False)
    with pytest.raises(ConfigError, match="other content"):
        fit(FitConfig(cache=str(rebuilt), batch_size=4, resume=True, **run), show_progress=False)


# ---- a server that stops answering --------------------------------------------------------------


@pytest.fixture
def silent_server():
    """A TCP server on loopback that accepts connections and never answers (a hung S3)."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    held: list[socket.socket] = []
    stop = threading.Event()

    def serve():
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.getsockname()[1]}"
    stop.set()
    thread.join()
    for c in held:
        c.close()
    server.close()


@pytest.mark.parametrize(
    "args", [["verify", "s3://b/c"], ["pull", "s3://b/c", "{tmp}/pulled", "--quiet"]]
)
def test_a_silent_server_is_one_line_within_the_timeout(silent_server, tmp_path, args):
    env = {**os.environ, "AWS_ENDPOINT_URL": silent_server, "AWS_ACCESS_KEY_ID": "k"}
    env |= {"AWS_SECRET_ACCESS_KEY": "s", "AWS_DEFAULT_REGION": "us-east-1"}
    cmd = [sys.executable, "-m", "hskcache.cli", "--timeout", "1", "--retries", "2"]
    cmd += [a.format(tmp=tmp_path) for a in args]
    start = time.monotonic()
    r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=120)
    took = time.monotonic() - start
    assert r.returncode == 1, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), r.stderr
    assert "timeout" in lines[0].lower()
    assert took < 60  # botocore's defaults alone wait minutes


def test_remote_faults_are_one_line(good, s3_server, tmp_path):
    """A missing bucket, no credentials and no server at the endpoint: one line each, from
    every command that meets them (each was a traceback)."""
    c, data, teacher = str(good["b"]), str(good["data"]), str(good["teacher"])
    build = ["build", "--data", data, "--teacher", teacher, "--hsk", "1l_2t_0.5h"]
    build += ["--max-length", "16", "--quiet", "--out"]
    no_creds = {"AWS_ACCESS_KEY_ID": None, "AWS_SECRET_ACCESS_KEY": None}
    no_creds |= {"AWS_SHARED_CREDENTIALS_FILE": "/nonexistent", "AWS_CONFIG_FILE": "/nonexistent"}
    no_server = {"AWS_ENDPOINT_URL": "http://127.0.0.1:1"}
    cases = [
        ({}, "hskcache", ["push", c, "s3://no-such-bucket/c", "--quiet"], "bucket"),
        ({}, "hskcache", [*build, "s3://no-such-bucket/b"], "bucket"),
        ({}, "hskcache", ["derive", c, "s3://no-such-bucket/d", "--hsk", "1l_1t_0.5h"], "bucket"),
        (no_creds, "hskcache", ["push", c, "s3://any/c", "--quiet"], "credentials"),
        (no_server, "hskcache", ["push", c, "s3://any/c", "--quiet"], "connect"),
        (no_server, "hskcache", ["verify", "s3://any/c"], "connect"),
        (
            no_server,
            "hsktrain",
            ["fit", "--cache", "s3://any/c", "--out", str(tmp_path / "r")],
            "connect",
        ),
    ]
    for change, tool, args, word in cases:
        env = {k: v for k, v in {**os.environ, **change}.items() if v is not None}
        cmd = [sys.executable, "-m", f"{tool}.cli", "--retries", "1", *args]
        r = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
        lines = r.stderr.strip().splitlines()
        assert r.returncode == 1 and len(lines) == 1, (args, r.stderr[-2000:])
        assert lines[0].startswith("error: ") and word in lines[0].lower(), (args, lines)


def test_a_garbage_lock_file_is_named_as_such(good, tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "hskcache.lock").write_text("not json")
    r = runner.invoke(app, ["derive", str(good["b"]), str(out), "--hsk", "1l_1t_0.5h"])
    assert r.exit_code == 1 and "?" not in r.output, r.output
    assert "held by a lock file that is not one hskcache wrote (unreadable)" in r.output
    assert "if no build is running there, remove" in r.output


def test_a_lying_size_is_refused_before_anything_is_copied(good, s3_bucket, tmp_path):
    """A remote manifest claiming a petabyte object is refused from one listing, before a
    progress bar sized by it or any download."""
    url = f"{s3_bucket}/liar"
    push(str(good["b"]), url, show_progress=False)
    doc = json.loads((good["b"] / "zarr.json").read_text())
    key = sorted(doc["attributes"]["hskcache"]["objects"])[-1]
    doc["attributes"]["hskcache"]["objects"][key]["bytes"] = 10**15
    fs = s3fs.S3FileSystem(skip_instance_cache=True)
    fs.pipe_file(f"{url.removeprefix('s3://')}/zarr.json", json.dumps(doc).encode())
    r = runner.invoke(app, ["pull", url, str(tmp_path / "dest")])
    assert r.exit_code == 1
    assert f"object '{key}' has {(good['b'] / key).stat().st_size} bytes" in r.output
    assert "1000000000000000" in r.output and "PB" not in r.output
    assert files_under(tmp_path) == set()


def test_the_server_dying_mid_fit_is_one_line(good, s3_bucket, tmp_path, monkeypatch):
    """The manifest and kit were read, then every shard download fails as a dead endpoint does:
    one line from `fit`, not a traceback."""
    import botocore.exceptions

    import hskcache.reader

    url = f"{s3_bucket}/dying"
    push(str(good["a"]), url, show_progress=False)

    def dead(store, key):
        raise botocore.exceptions.EndpointConnectionError(endpoint_url=f"{url}/{key}")

    monkeypatch.setattr(hskcache.reader, "read_object", dead)
    args = ["fit", "--cache", url, "--local-cache", str(tmp_path / "lc"), "--student", "tiny"]
    r = runner.invoke(train_app, [*args, "--out", str(tmp_path / "run")])
    assert r.exit_code == 1, r.output
    lines = r.output.strip().splitlines()
    assert lines[-1].startswith("error: object storage failed (EndpointConnectionError"), lines
    assert not any("Traceback" in line for line in lines)
