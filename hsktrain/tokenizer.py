"""The student's tokenizer: where it comes from (its init's folder, or the one a cache carries),
and the check that it reads a cache's token ids as the same tokens at the same length. A student
whose vocabulary, special tokens or pipeline differ would train on garbage ids without a word;
this refuses it by name instead.
"""

from __future__ import annotations

from pathlib import Path

from hskcache.assets import materialise
from hskcache.errors import CacheError, CacheMismatchError, TeacherError
from hskcache.reader import Cache
from hskcache.teacher import check_model_folder, tokenizer_difference, tokenizer_sha256
from hsktrain.checkpoint import refuse_run_folder
from hsktrain.config import FitConfig


def tokenizer_for(source):
    """The student's tokenizer: its init source's (a folder or name), or the one a cache
    carries (a `Cache`, whose tokenizer files are written to a temp dir first); or one clear
    error."""
    # lazy: transformers takes seconds to import; commands that load no model skip it
    from transformers import AutoTokenizer

    if isinstance(source, Cache):
        folder = materialise(source, source.info.assets.tokenizer)
        try:
            return AutoTokenizer.from_pretrained(folder, use_fast=True, trust_remote_code=False)
        except (OSError, ValueError) as e:
            raise CacheError(
                f"{source.url}: its stored tokenizer does not load "
                f"({str(e).splitlines()[0]}); pull or rebuild the cache"
            ) from e
    folder = Path(source)
    if folder.exists():  # before any of its files is read: custom code, pickle, a run folder
        refuse_run_folder(folder)
        if not (folder / "config.json").is_file():
            raise TeacherError(
                f"{folder}: not a model folder (no config.json); pass a teacher or "
                "checkpoint folder to --init-from"
            )
        check_model_folder(folder)
    try:
        return AutoTokenizer.from_pretrained(source, use_fast=True, trust_remote_code=False)
    except (OSError, ValueError) as e:
        raise TeacherError(f"{source}: cannot load its tokenizer ({str(e).splitlines()[0]})") from e


def check_tokens(cfg: FitConfig, cache: Cache, tokenizer, init_from: str) -> None:
    """Refuse a cache built for another tokenizer (one that gives other ids: vocabulary,
    special tokens, pipeline) or max length than this run's."""
    info = cache.info
    if cfg.max_length is not None and cfg.max_length != info.max_length:
        raise CacheMismatchError(
            "max_length",
            cfg.max_length,
            info.max_length,
            "rebuild the cache with this --max-length",
        )
    found = tokenizer_sha256(tokenizer)
    if found == info.tokenizer.sha256:
        return
    why = tokenizer_difference(tokenizer, tokenizer_for(cache))
    if why is not None:
        raise CacheMismatchError(
            f"tokenizer {why}",
            info.tokenizer.sha256[:12],
            found[:12],
            f"the student's tokenizer ({init_from}) would read the cache's token ids as other "
            "tokens; use a student of the cache's teacher family and vocabulary, or rebuild "
            "the cache with the student's tokenizer",
        )
