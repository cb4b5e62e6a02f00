"""Where a cache lives: a local folder or any fsspec URL (`Location`, `locate`), and how its
objects are read and hashed (streamed in blocks, sha256 + md5 in one pass). Used by `push` /
`pull` (transfer.py) and `ls` (catalog.py).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import fsspec
from fsspec import AbstractFileSystem
from fsspec.implementations.local import LocalFileSystem

from hskcache.errors import HskError
from hskcache.names import check_key, inside
from hskcache.storage.remote import bound_remote_calls, short_error

BLOCK = 8 * 2**20  # streaming read size: bounded memory whatever the object's size
# Objects up to this size move in one request from memory (shards are ~16 MiB by default); larger
# ones (a bundled teacher) stream through a file. s3fs uploads anything under 100 MiB in one
# PutObject, so these get an ETag that is their MD5.
INLINE_BYTES = 32 * 2**20


@dataclass
class Location:
    """A cache's place: the user's URL, its filesystem and the root path inside it."""

    url: str
    fs: AbstractFileSystem
    root: str

    @property
    def local(self) -> bool:
        return isinstance(self.fs, LocalFileSystem)

    def path(self, key: str) -> str:
        """The full path of `key`, refused unless it stays inside the root (a key may come
        from a received manifest).

        Raises:
            UnsafeNameError: the key is absolute, has a `..` component, or (local) resolves
                outside the root through a symlink.
        """
        if self.local:
            return str(inside(Path(self.root), key, self.url))
        return f"{self.root.rstrip('/')}/{check_key(key, self.url)}"

    def child(self, name: str) -> Location:
        return Location(f"{self.url.rstrip('/')}/{name}", self.fs, self.path(name))

    def listing(self) -> dict[str, dict]:
        """{key relative to the root: fsspec info} for every object under the root."""
        try:
            found = self.fs.find(self.root, detail=True)
        except FileNotFoundError:
            return {}
        except Exception as e:  # a missing bucket, refused credentials, no server
            raise HskError(f"{self.url}: cannot list ({short_error(e)})") from e
        prefix = self.root.rstrip("/") + "/"
        return {p[len(prefix) :]: info for p, info in found.items() if p.startswith(prefix)}


def locate(url: str) -> Location:
    """The filesystem behind a local path or fsspec URL, with fresh (uncached) listings.

    Raises:
        HskError: the URL's protocol is unknown, or needs a package that is not installed.
    """
    bound_remote_calls(url)
    try:
        fs, root = fsspec.url_to_fs(url, skip_instance_cache=True)
    except ImportError as e:
        protocol = url.split("://", 1)[0]
        raise HskError(
            f"{url}: the '{protocol}' protocol needs a package that is not installed ({e}); "
            "install it (`pip install 'hskcache[s3]'` for s3://)"
        ) from e
    except ValueError as e:
        raise HskError(
            f"{url}: unknown storage protocol ({e}); give a local path or an fsspec URL "
            "(s3://, gs://, file://, memory://)"
        ) from e
    return Location(url, fs, root)


def digest(blocks: Iterator[bytes], advance: Callable[[int], None] = lambda n: None):
    """(sha256 hex, md5 hex, bytes) of a stream, passing each block on to `advance`."""
    sha, md5, n = hashlib.sha256(), hashlib.md5(usedforsecurity=False), 0
    for block in blocks:
        sha.update(block)
        md5.update(block)
        n += len(block)
        advance(len(block))
    return sha.hexdigest(), md5.hexdigest(), n


def object_blocks(fs: AbstractFileSystem, path: str, size: int) -> Iterator[bytes]:
    """The bytes of one object: one request when small or local-cheap, else streamed."""
    if size <= INLINE_BYTES and not isinstance(fs, LocalFileSystem):
        yield fs.cat_file(path)
        return
    with fs.open(path, "rb", block_size=BLOCK) as f:
        while block := f.read(BLOCK):
            yield block


def store_md5(info: dict) -> str | None:
    """The MD5 a store reports for an object, when it reports one (S3 single-part ETag)."""
    etag = str(info.get("ETag") or info.get("etag") or "").strip('"').lower()
    if len(etag) == 32 and all(c in "0123456789abcdef" for c in etag):
        return etag
    return None
