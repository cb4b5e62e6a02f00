"""Packaging: what a wheel needs is inside the package (`make wheel-check` installs one)."""

import tomllib
from pathlib import Path

from hskcache.manifest import _validator

ROOT = Path(__file__).resolve().parents[1]


def test_packaged_schema_is_the_source_schema():
    source = ROOT / "schemas" / "cache.schema.json"
    packaged = ROOT / "hskcache" / "cache.schema.json"
    assert packaged.read_bytes() == source.read_bytes(), (
        "hskcache/cache.schema.json differs from schemas/cache.schema.json (the one source); "
        "copy it: cp schemas/cache.schema.json hskcache/cache.schema.json"
    )


def test_schema_is_package_data_and_loads():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "cache.schema.json" in meta["tool"]["setuptools"]["package-data"]["hskcache"]
    assert meta["project"]["requires-python"] == ">=3.11"  # tomllib
    assert _validator().schema["type"] == "object"
