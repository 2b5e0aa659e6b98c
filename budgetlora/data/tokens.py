"""Tokens: token ids per text, cached on disk.

Tokenisation goes through `datasets.Dataset.map` with a cache file named by a hash of the texts
and the tokenizer, so a second run reads the token ids back instead of re-tokenising.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np

from ..errors import first_line, warn

def cache_dir() -> Path:
    root = os.environ.get("BUDGETLORA_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "budgetlora"
    )
    return Path(root) / "tokens"


def _fingerprint(texts: list[str], tokenizer, max_length: int) -> str:
    h = hashlib.sha256()
    h.update(f"{type(tokenizer).__name__}|{tokenizer.name_or_path}|{len(tokenizer)}|{max_length}|".encode())
    h.update(repr(tokenizer("budgetlora fingerprint: Ünïcode 123")["input_ids"]).encode())
    for text in texts:
        h.update(text.encode("utf-8", "surrogatepass"))
        h.update(b"\x00")
    return h.hexdigest()[:24]


def tokenize(texts: list[str], tokenizer, max_length: int, use_cache: bool = True) -> list[np.ndarray]:
    """Token ids per text (truncated, unpadded); cached on disk by content + tokenizer hash.

    It is a cache: an entry that cannot be read back (truncated, corrupt) is deleted and rebuilt,
    and one that cannot be written (disk full, read-only) costs a warning, never the run.
    """
    fingerprint = _fingerprint(texts, tokenizer, max_length)
    if use_cache:
        path = cache_dir() / f"{fingerprint}.arrow"
        existed = path.is_file()
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            return _map_tokenizer(texts, tokenizer, max_length, fingerprint, path)
        except Exception as e:  # noqa: BLE001 -- arrow, OS and datasets errors all mean "no usable cache"
            reason = f"{type(e).__name__}: {first_line(e, limit=160)}"
            if existed:
                warn(f"token cache {path} is unreadable ({reason}); deleted, tokenising again")
                path.unlink(missing_ok=True)
                return tokenize(texts, tokenizer, max_length, use_cache)
            warn(f"token cache not written to {path.parent} ({reason}); tokenising in memory")
            path.unlink(missing_ok=True)
    return _map_tokenizer(texts, tokenizer, max_length, fingerprint, None)


def _map_tokenizer(texts: list[str], tokenizer, max_length: int, fingerprint: str, cache_file: Path | None):
    """`datasets.Dataset.map` of the tokenizer, read from / written to `cache_file` when given."""
    import datasets

    def encode(batch):
        return {"input_ids": tokenizer(batch["text"], truncation=True, max_length=max_length)["input_ids"]}

    ds = datasets.Dataset.from_dict({"text": texts})
    # our own fingerprint: without it `datasets` dill-pickles the tokenizer to hash `encode`,
    # which costs seconds per call (measured: 5.7 s of a 28 s tiny run)
    kwargs = dict(batched=True, batch_size=2000, remove_columns=["text"], new_fingerprint=fingerprint)
    if cache_file is not None:
        kwargs.update(cache_file_name=str(cache_file))
    was_enabled = datasets.is_progress_bar_enabled()
    datasets.disable_progress_bars()
    try:
        ds = ds.map(encode, load_from_cache_file=True, **kwargs)
    finally:
        if was_enabled:
            datasets.enable_progress_bars()
    ids = [np.asarray(row, dtype=np.int64) for row in ds.with_format("numpy")["input_ids"]]
    if len(ids) != len(texts):
        raise ValueError(f"{len(ids)} rows cached for {len(texts)} texts")
    return ids
