"""`Cache.info`: the typed, read-only view of the manifest holds exactly the manifest's values."""

from __future__ import annotations

import copy
import dataclasses
import json
import pickle
import shutil
from collections.abc import Mapping

import pytest
from test_build import make_cfg

from conftest import write_sst2
from hskcache.build import build_cache
from hskcache.errors import CacheError
from hskcache.manifest import MANIFEST_KEY, ManifestView, content_digest
from hskcache.reader import open_cache


def plain(x):
    """The view back as JSON values (dataclasses -> dicts, tuples -> lists)."""
    if dataclasses.is_dataclass(x):
        return {f.name: plain(getattr(x, f.name)) for f in dataclasses.fields(x)}
    if isinstance(x, Mapping):
        return {k: plain(v) for k, v in x.items()}
    if isinstance(x, tuple):
        return [plain(v) for v in x]
    return x


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_bert):
    data = write_sst2(tmp_path_factory.mktemp("data") / "SST-2")
    out = tmp_path_factory.mktemp("c") / "cache"
    cfg = make_cfg(data, out, tiny_bert, hsk="1l_4t_0.25h", bundle_teacher=True)
    return build_cache(cfg, show_progress=False)


def test_view_holds_every_field_of_a_real_manifest(built):
    cache = open_cache(built)
    got = plain(cache.info)
    got["tokenizer"]["class"] = got["tokenizer"].pop("class_name")
    assert got.pop("derived_from") is None  # a built cache has no parent
    assert got.pop("content") == content_digest(cache.manifest)  # computed, not stored
    assert got == cache.manifest
    # values the build config set, read through the typed attributes
    info = cache.info
    assert (info.storage.chunk_rows, info.storage.shard_rows, info.max_length) == (4, 8, 16)
    assert (info.selection.name, info.selection.tokens_kept, info.selection.width_kept) == (
        "1l_4t_0.25h",
        4,
        8,  # a quarter of the tiny teacher's 32 dims
    )
    assert info.complete and info.stats is not None and info.assets.teacher is not None
    assert info.data.label_names == ("0", "1")
    assert cache.chunk_rows == 4 and cache.layers == info.layers


def test_a_derived_caches_view_names_its_parent(built, tmp_path):
    from hskcache.config import DeriveConfig
    from hskcache.derive import derive_cache

    parent = open_cache(built).info
    out = derive_cache(
        DeriveConfig(src=str(built), out=str(tmp_path / "d"), hsk="1l_2t_0.25h"),
        show_progress=False,
    )
    cache = open_cache(out)
    got = plain(cache.info)
    got["tokenizer"]["class"] = got["tokenizer"].pop("class_name")
    assert got.pop("content") == content_digest(cache.manifest)
    assert got == cache.manifest
    assert cache.info.derived_from.identity == parent.identity
    assert cache.info.derived_from.selection == "1l_4t_0.25h"
    assert cache.info.selection.tokens_kept == 2


def test_view_is_read_only(built):
    info = open_cache(built).info
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.storage.chunk_rows = 1
    with pytest.raises(TypeError):
        info.objects["zarr.json"] = None
    with pytest.raises(TypeError):
        info.teacher.config["hidden_size"] = 1


def test_view_pickles_and_deep_copies(built):
    """A `Cache` (and its view) may be sent to another process, e.g. a DataLoader worker."""
    info = open_cache(built).info
    assert pickle.loads(pickle.dumps(info)) == info
    assert copy.deepcopy(info) == info


def test_a_manifest_missing_a_field_is_refused_before_the_view_is_built(
    built, tmp_path, monkeypatch
):
    broken = tmp_path / "broken"
    shutil.copytree(built, broken)
    meta = json.loads((broken / "zarr.json").read_text())
    del meta["attributes"][MANIFEST_KEY]["storage"]["chunk_rows"]
    (broken / "zarr.json").write_text(json.dumps(meta))

    def never(m):
        raise AssertionError("the view was built from a manifest that broke the schema")

    monkeypatch.setattr(ManifestView, "from_dict", staticmethod(never))
    with pytest.raises(CacheError, match="storage: 'chunk_rows' is a required property"):
        open_cache(broken)
