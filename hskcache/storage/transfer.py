"""`hskcache push` / `pull`: copy a complete cache between a local folder and any fsspec URL.

A cache moves as plain objects: every key of the manifest's `objects` table (whatever it lists,
assets included), in parallel, each checked against the table's size and sha256; then the root
`zarr.json`, which holds the manifest, last. Until that last write the destination has no root,
so no reader sees a half-copied cache as complete, or even as a cache. A rerun after a kill
skips every object already at the destination with the right size and sha256 and copies the
rest. Local writes go through a temp file and a rename, so a local object is whole or absent.
The destination's lock (the one `hskcache build` takes) is held throughout, so two copies, or a
copy and a build, never write one place at the same time.
"""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor, as_completed
from contextlib import suppress
from dataclasses import dataclass

from hskcache.errors import CacheError, HskError
from hskcache.names import check_key
from hskcache.progress import bytes_bar
from hskcache.storage import location as storage
from hskcache.storage.location import (
    Location,
    digest,
    locate,
    object_blocks,
    store_md5,
)
from hskcache.storage.lock import LOCK_KEY, BuildLock
from hskcache.storage.objects import ROOT_KEY
from hskcache.storage.remote import short_error
from hskcache.storage.source import (
    Source,
    check_local_source,
    manifest_in,
    mismatch,
    open_source,
)
from hskcache.verify import verify_cache

PARTIAL = ".partial"  # suffix of local temp files; leftovers of a killed run are removed


@dataclass
class Report:
    """What one push or pull did."""

    source: str
    destination: str
    identity: str
    copied: int = 0
    skipped: int = 0
    bytes_copied: int = 0
    already_there: bool = False


class Transfer:
    """One copy of `src` to `dst`; `run()` does it, `copy_object` moves one object."""

    def __init__(
        self, src: Source, dst: Location, jobs: int, overwrite: bool, break_lock: bool = False
    ):
        if jobs < 1:
            raise HskError(f"--jobs {jobs}: must be >= 1")
        self.src, self.dst, self.jobs, self.overwrite = src, dst, jobs, overwrite
        self.break_lock = break_lock
        self.report = Report(src.loc.url, dst.url, src.info.identity)

    # --- destination ------------------------------------------------------------------

    def prepare(self) -> dict[str, dict]:
        """Make the destination safe to write; return its listing (empty when already there).

        What is already there is decided first, reading only; then a local source is hashed in
        full (local reads are cheap next to a transfer), so a damaged source is refused before
        anything at the destination changes.

        Raises:
            CacheError: it holds another cache (without --overwrite), something that is not
                a cache, or files this cache does not have; a damaged local source.
        """
        dst, table = self.dst, self.src.table
        root = dst.path(ROOT_KEY)
        found_bytes = dst.fs.cat_file(root) if dst.fs.exists(root) else None
        found = manifest_in(found_bytes)
        if found_bytes is not None:
            if found is None:
                raise CacheError(
                    f"{dst.url}: holds a zarr.json that is not an hskcache cache's; choose "
                    "another destination"
                )
            same = (
                found.get("status") == "complete"
                and found.get("identity") == self.src.info.identity
                and found.get("objects") == table
            )
            if same and not self.overwrite:
                self.report.already_there = True
                return {}
            if not same and not self.overwrite:
                raise CacheError(
                    f"{dst.url}: holds another cache (identity "
                    f"{str(found.get('identity'))[:12]}, status {found.get('status')}); pass "
                    "--overwrite to replace it, or choose another destination"
                )
        old_table = (found or {}).get("objects")
        old = list(old_table) if isinstance(old_table, dict) else []
        for key in old:  # the old cache's own names decide what is deleted: checked first
            check_key(key, dst.url)
        present = {k: v for k, v in dst.listing().items() if k not in (LOCK_KEY, ROOT_KEY)}
        foreign = sorted(
            k for k in present if k not in table and k not in old and not k.endswith(PARTIAL)
        )
        if foreign:  # refused before anything is deleted: the old cache stays whole
            raise CacheError(
                f"{dst.url}: holds {len(foreign)} file(s) that are not part of this cache "
                f"(first: '{foreign[0]}'); choose an empty destination"
            )
        check_local_source(self.src)
        if found is not None:
            dst.fs.rm_file(root)  # first: from here on nothing reads the old cache, or a mix
            for key in (k for k in old if k not in table):  # the old cache's own objects
                with suppress(FileNotFoundError):
                    dst.fs.rm_file(dst.path(key))
                present.pop(key, None)
            dst.fs.invalidate_cache()
        for key in [k for k in present if k.endswith(PARTIAL)]:  # temp files of a killed run
            dst.fs.rm_file(dst.path(key))
        return {k: v for k, v in present.items() if k in table}

    def verified_there(self, key: str, info: dict | None) -> bool:
        """True when the destination already holds this object, whole and unaltered."""
        want = self.src.table[key]
        if info is None or info.get("size") != want["bytes"]:
            return False
        md5 = store_md5(info)
        if md5 and md5 == self.src.md5.get(key):
            return True
        sha, _, n = digest(object_blocks(self.dst.fs, self.dst.path(key), want["bytes"]))
        return mismatch("", key, want, sha, n) is None

    # --- one object ---------------------------------------------------------------------

    def copy_object(self, key: str, advance: Callable[[int], None]) -> None:
        """Copy one object, checking it against the table before it lands in place."""
        want, src, dst = self.src.table[key], self.src.loc, self.dst
        src_path, dst_path = src.path(key), dst.path(key)
        try:
            if dst.local:
                self._to_local(key, want, advance)
            elif want["bytes"] <= storage.INLINE_BYTES or not src.local:
                self._to_remote(key, want, advance)
            else:  # a large local object streams from its file
                sha, md5, n = digest(object_blocks(src.fs, src_path, want["bytes"]))
                self._check_source(key, want, sha, n)
                dst.fs.put_file(src_path, dst_path)
                advance(n)
                self._check_remote(key, want, md5)
        except HskError:
            raise
        except FileNotFoundError as e:
            raise CacheError(
                f"{src.url}: object '{key}' is missing ({short_error(e)}); nothing was marked "
                f"complete at {dst.url}"
            ) from e
        except Exception as e:  # network, permissions, a full disk: the rerun resumes
            raise HskError(
                f"copying object '{key}' from {src.url} to {dst.url} failed ({short_error(e)}); "
                "rerun the same command to resume"
            ) from e

    def _check_source(self, key: str, want: dict, sha: str, n: int) -> None:
        problem = mismatch(self.src.loc.url, key, want, sha, n)
        if problem:
            raise CacheError(
                f"{problem}; not copied, and nothing was marked complete at {self.dst.url}"
            )

    def _to_local(self, key: str, want: dict, advance: Callable[[int], None]) -> None:
        """Download to a temp file beside the target, hash it, then rename it into place."""
        path = self.dst.path(key)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        tmp = f"{path}.{uuid.uuid4().hex[:8]}{PARTIAL}"
        try:
            with open(tmp, "wb") as out:

                def write(block: bytes) -> None:
                    out.write(block)
                    advance(len(block))

                sha, _, n = digest(_tee(self.src, key, want["bytes"], write))
            self._check_source(key, want, sha, n)
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)

    def _to_remote(self, key: str, want: dict, advance: Callable[[int], None]) -> None:
        """Upload from memory (small) or through a local temp file (a large remote source)."""
        src = self.src.loc
        if want["bytes"] <= storage.INLINE_BYTES:
            data = b"".join(object_blocks(src.fs, src.path(key), want["bytes"]))
            sha, md5, n = digest(iter([data]))
            self._check_source(key, want, sha, n)
            self.dst.fs.pipe_file(self.dst.path(key), data)
        else:
            with tempfile.TemporaryDirectory() as tmpdir:
                tmp = os.path.join(tmpdir, "object")
                with open(tmp, "wb") as out:
                    sha, md5, n = digest(_tee(self.src, key, want["bytes"], out.write))
                self._check_source(key, want, sha, n)
                self.dst.fs.put_file(tmp, self.dst.path(key))
        advance(n)
        self._check_remote(key, want, md5)

    def _check_remote(self, key: str, want: dict, md5: str) -> None:
        """Check an uploaded object: its size always; its content when the store gives an MD5.

        No read-back: it would double the traffic of every push, and the content is already
        covered twice on S3. Each PutObject carries the body's sha256 (SigV4's
        X-Amz-Content-SHA256) and CRC32 (x-amz-checksum-crc32), which the server checks before
        storing (seen in botocore 1.43's debug log); and a single-part upload's ETag is the
        body's MD5, compared here. Stores that report no MD5 (memory://, a multipart upload)
        get the size check only; `hskcache verify URL` re-reads everything when wanted.
        """
        path = self.dst.path(key)
        self.dst.fs.invalidate_cache(path)
        info = self.dst.fs.info(path)
        if info.get("size") != want["bytes"]:
            raise HskError(
                f"{self.dst.url}: object '{key}' has {info.get('size')} bytes after upload, "
                f"{want['bytes']} were sent; rerun the same command"
            )
        remote_md5 = store_md5(info)
        if remote_md5 and remote_md5 != md5:  # an ETag that is not an MD5 (SSE-KMS): read back
            sha, _, n = digest(object_blocks(self.dst.fs, path, want["bytes"]))
            if mismatch("", key, want, sha, n):
                raise HskError(
                    f"{self.dst.url}: object '{key}' differs from what was uploaded; rerun the "
                    "same command"
                )

    # --- the whole copy -----------------------------------------------------------------

    def run(self, label: str, show_progress: bool) -> Report:
        """Copy every object not already there, then write the root last, under the lock.

        Raises:
            LockHeldError: a build or another copy is writing the destination.
            CacheError / HskError: the first object that failed; the root is not written.
        """
        if self.dst.fs.isfile(self.dst.root):
            raise CacheError(f"{self.dst.url}: is a file; give a folder or prefix for the cache")
        lock = BuildLock.acquire(self.dst.url, self.break_lock)
        try:
            return self._run(lock, label, show_progress)
        finally:
            lock.release()

    def _run(self, lock: BuildLock, label: str, show_progress: bool) -> Report:
        present = self.prepare()
        if self.report.already_there:
            return self.report
        table = self.src.table
        with ThreadPoolExecutor(self.jobs) as pool:
            checks = {k: pool.submit(self.verified_there, k, present.get(k)) for k in present}
            done = {k for k, f in checks.items() if f.result()}
        todo = [k for k in table if k not in done]
        self._check_remote_sizes(todo)
        self.report.skipped = len(done)
        total = sum(table[k]["bytes"] for k in todo)
        with bytes_bar(label, total, show_progress) as advance:
            _run_all(self.jobs, [lambda k=k: self.copy_object(k, advance) for k in todo])
        self.report.copied = len(todo)
        self.report.bytes_copied = total
        lock.check()  # taken over (--break-lock elsewhere) mid-copy: do not mark complete
        self._write_root()
        return self.report

    def _check_remote_sizes(self, keys: list[str]) -> None:
        """Compare a remote source's sizes (one listing) with the table before any progress
        bar: a manifest lying about a size is refused at once, not after a bar sized by it.

        Raises:
            CacheError: naming the first object whose size differs, or that is absent.
        """
        src = self.src.loc
        if src.local:
            return  # hashed in full by prepare()
        listing = src.listing()
        for key in keys:
            size = (listing.get(key) or {}).get("size")
            if size != self.src.table[key]["bytes"]:
                found = "is missing" if size is None else f"has {size} bytes"
                raise CacheError(
                    f"{src.url}: object '{key}' {found}, the manifest records "
                    f"{self.src.table[key]['bytes']}; nothing was copied: run `hskcache verify` "
                    "on it, rebuild it if damaged"
                )

    def _write_root(self) -> None:
        path, data = self.dst.path(ROOT_KEY), self.src.root_bytes
        if self.dst.local:
            os.makedirs(os.path.dirname(path), exist_ok=True)
            tmp = f"{path}.{uuid.uuid4().hex[:8]}{PARTIAL}"
            with open(tmp, "wb") as f:
                f.write(data)
            os.replace(tmp, path)
        else:
            self.dst.fs.pipe_file(path, data)
            self.dst.fs.invalidate_cache(path)
            if self.dst.fs.info(path).get("size") != len(data):
                raise HskError(f"{self.dst.url}: the manifest did not land whole; rerun")


def _tee(src: Source, key: str, size: int, sink: Callable[[bytes], object]) -> Iterator[bytes]:
    for block in object_blocks(src.loc.fs, src.loc.path(key), size):
        sink(block)
        yield block


def _run_all(jobs: int, tasks: list[Callable[[], None]]) -> None:
    """Run tasks on a pool; the first failure cancels what has not started and is raised."""
    with ThreadPoolExecutor(jobs) as pool:
        futures = [pool.submit(t) for t in tasks]
        try:
            for f in as_completed(futures):
                f.result()
        except BaseException:
            for f in futures:
                f.cancel()
            raise


def push(
    local: str,
    url: str,
    jobs: int = 8,
    overwrite: bool = False,
    by_identity: bool = False,
    show_progress: bool = True,
    break_lock: bool = False,
) -> Report:
    """Copy a complete local cache to `url` (or `url/<name>` with `by_identity`, the name being
    `ManifestView.name`: identity plus content digest, so only equal bytes meet there).

    Returns:
        What was copied; `already_there` when the destination held this very cache.

    Raises:
        CacheError: the source is no complete, sound cache, or the destination holds another.
        HskError: an unreachable or unknown URL, or an object that failed to copy.
    """
    dst = locate(url)  # an unusable URL fails before the source is read
    src = open_source(local)
    if by_identity:
        dst = dst.child(src.info.name)
    return Transfer(src, dst, jobs, overwrite, break_lock).run("push", show_progress)


def pull(
    url: str,
    local: str,
    jobs: int = 8,
    overwrite: bool = False,
    show_progress: bool = True,
    break_lock: bool = False,
) -> Report:
    """Copy a complete cache from `url` to `local`, then verify the local copy in full.

    Raises:
        CacheError: the source is no complete cache, an object does not match the manifest
            (named), the destination holds another cache, or the copy fails `verify`.
    """
    dst = locate(local)
    src = open_source(url)
    report = Transfer(src, dst, jobs, overwrite, break_lock).run("pull", show_progress)
    problems = verify_cache(local, show_progress=show_progress)
    if not problems:
        return report
    more = f" (+{len(problems) - 1} more)" if len(problems) > 1 else ""
    if report.already_there:  # a copy made earlier, damaged since
        raise CacheError(
            f"{local}: holds this cache but fails verify: {problems[0]}{more}; pull again with "
            "--overwrite to re-check every object and replace the damaged ones"
        )
    # Every object matched the manifest, so the source itself is unsound: unmark the copy.
    dst.fs.rm_file(dst.path(ROOT_KEY))
    raise CacheError(
        f"{local}: the pulled copy fails verify: {problems[0]}{more}; the cache at {url} is "
        "damaged: rebuild it"
    )
