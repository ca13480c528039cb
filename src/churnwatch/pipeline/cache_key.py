"""What an encoded-cache entry's key is made of: everything that decides what `build_data` produces.

Key (BLAKE2b): each input file's resolved path (or URL), size, mtime_ns and content hash; the data config
minus the keys that do not change the encoding (loader settings, drivers, paths covered by the file
identities); the cache format version, the churnwatch version and a fingerprint of the data-path source code
(CODE_MODULES). Each entry stores these parts as key.json, so a later miss can say what changed.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
from collections.abc import Mapping
from functools import lru_cache
from pathlib import Path
from typing import Any

from churnwatch import __version__
from churnwatch.config.schema import CACHE, DRIVERS, LOADING, keys_of
from churnwatch.config.schema import INPUTS as INPUTS_CONCERN
from churnwatch.data.readers import InputFile, dataset_files
from churnwatch.io.object_store import is_url

FORMAT_VERSION = 2
"""Bump when the entry layout or the meaning of a stored array changes."""

LOADER_KEYS = keys_of(LOADING)
"""Data keys read only when batches are served: changing them must not invalidate an encoding."""
NOT_ENCODING_KEYS = keys_of(INPUTS_CONCERN, CACHE, DRIVERS)
"""Keys that never reach the encoding: the cache itself, drivers, and paths (their files' identities are
part of the key instead, so moving the data misses but renaming a config variable does not). Both sets
come from each key's concern in config/schema.py DataConfig."""
INPUTS = (("events", "events_path"), ("customers", "customers_path"), ("labels", "labels_path"))
CODE_MODULES = (
    "churnwatch.data.expression_grammar",
    "churnwatch.data.expressions",
    "churnwatch.data.loaders",
    "churnwatch.data.parsing",
    "churnwatch.data.readers",
    "churnwatch.data.schema",
    "churnwatch.data.snapshots",
    "churnwatch.data.splits",
    "churnwatch.data.validation",
    "churnwatch.features.aggregates",
    "churnwatch.features.encode",
    "churnwatch.features.stats",
    "churnwatch.features.time_to_event",
    "churnwatch.features.window",
    "churnwatch.pipeline.cache",
    "churnwatch.pipeline.cache_entry",
    "churnwatch.pipeline.cache_key",
    "churnwatch.pipeline.dataset",
)
"""The source files whose code decides what an entry holds: editing any of them invalidates entries.
tests/pipeline/test_cache.py checks that every data, features and pipeline module the build and the entry
reader import is listed."""
BLOCK = 8 << 20
SAMPLES = 16
SAMPLE_BYTES = 64 << 10


# ------------------------------------------------------------------------------------------------- the key


def content_digest(path: str | Path | InputFile, how: str = "full", file: str | None = None) -> str:
    """BLAKE2b of a file (or of the file `file` on `path`'s file system): every byte (`full`) or its head,
    tail and 16 evenly spread blocks (`sampled`)."""
    h = hashlib.blake2b(digest_size=20)
    source = path if isinstance(path, InputFile) else InputFile.of(path)
    size = source.size_and_mtime(file)[0]
    with source.open(file) as f:
        if how == "full" or size <= 2 * BLOCK + SAMPLES * SAMPLE_BYTES:
            while block := f.read(BLOCK):
                h.update(block)
            return h.hexdigest()
        h.update(f.read(BLOCK))
        for k in range(SAMPLES):
            f.seek(BLOCK + (size - 2 * BLOCK - SAMPLE_BYTES) * k // max(SAMPLES - 1, 1))
            h.update(f.read(SAMPLE_BYTES))
        f.seek(size - BLOCK)
        h.update(f.read(BLOCK))
    return h.hexdigest()


def size_and_mtime(path: str | Path) -> tuple[int, int]:
    """A file's size and mtime_ns; a dataset directory's: its files' total size and latest mtime_ns (a URL:
    as its store reports them)."""
    source = InputFile.of(path)
    if not source.is_dir():
        return source.size_and_mtime()
    stats = [source.size_and_mtime(f) for f in dataset_files(source)]
    return sum(size for size, _ in stats), max((mtime for _, mtime in stats), default=0)


def _digest(source: InputFile, how: str) -> str:
    if not source.is_dir():
        return content_digest(source, how)
    h = hashlib.blake2b(digest_size=20)
    for file in dataset_files(source):
        h.update(f"{os.path.relpath(file, source.path)}\0{content_digest(source, how, file)}\0".encode())
    return h.hexdigest()


def resolved(path: str | Path) -> str:
    """`path` absolute, links resolved (a URL as it is): what names an input in a key."""
    return str(path) if is_url(path) else str(Path(path).expanduser().resolve())


def file_identity(path: str | Path, how: str = "full") -> dict[str, Any]:
    """Resolved path (or URL), size, mtime_ns and content digest (of a dataset directory: over its files, by
    name); raises OSError if the input changes while hashed."""
    resolved_path = resolved(path)
    before = size_and_mtime(resolved_path)
    digest = _digest(InputFile.of(resolved_path), how)
    after = size_and_mtime(resolved_path)
    if before != after:
        raise OSError(f"{resolved_path} changed while it was being hashed")
    return {
        "path": resolved_path,
        "size": after[0],
        "mtime_ns": after[1],
        "content": f"blake2b-{how}:{digest}",
    }


def encoding_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The part of a (resolved) data config that can change what build_data produces."""
    return {k: v for k, v in cfg.items() if k not in LOADER_KEYS and k not in NOT_ENCODING_KEYS}


@lru_cache(maxsize=1)
def code_fingerprint() -> str:
    """BLAKE2b of the data-path modules' source, so an edited encoder never meets an old entry."""
    h = hashlib.blake2b(digest_size=16)
    for name in CODE_MODULES:
        spec = importlib.util.find_spec(name)
        origin = spec.origin if spec is not None else None
        h.update(name.encode())
        if origin and os.path.exists(origin):
            h.update(Path(origin).read_bytes())
    return h.hexdigest()


def key_parts(cfg: Mapping[str, Any], how: str = "full") -> dict[str, Any]:
    """Everything the key is made of (stored in each entry as key.json, to explain later misses)."""
    return {
        "format": FORMAT_VERSION,
        "churnwatch": __version__,
        "code": code_fingerprint(),
        "inputs": {role: file_identity(cfg[k], how) if cfg.get(k) else None for role, k in INPUTS},
        "config": encoding_config(cfg),
    }


def digest_key(parts: Mapping[str, Any]) -> str:
    blob = json.dumps(parts, sort_keys=True, default=str, separators=(",", ":"))
    return hashlib.blake2b(blob.encode(), digest_size=16).hexdigest()


def describe_change(old: Mapping[str, Any], new: Mapping[str, Any]) -> str:
    """What differs between an older entry's key parts (its key.json) and `new`: why `new` missed it."""
    changes = []
    if old.get("format") != new["format"] or old.get("churnwatch") != new["churnwatch"]:
        changes.append("cache format or churnwatch version changed")
    if old.get("code") != new["code"]:
        changes.append("data-path code changed")
    for role, mine in new["inputs"].items():
        theirs = old.get("inputs", {}).get(role)
        if mine != theirs:
            what = [
                k for k in ("size", "mtime_ns", "content") if (mine or {}).get(k) != (theirs or {}).get(k)
            ]
            changes.append(f"{role} file changed ({', '.join(what)})")
    config, before = new["config"], old.get("config", {})
    diff = sorted(k for k in set(config) | set(before) if config.get(k) != before.get(k))
    if diff:
        changes.append(
            "data config changed: "
            + ", ".join(f"{k} {_short(before.get(k))} → {_short(config.get(k))}" for k in diff)
        )
    return "; ".join(changes) or "no entry for this key"


def _short(value: Any, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."
