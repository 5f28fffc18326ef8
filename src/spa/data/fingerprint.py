"""What data a run saw, in a few numbers: part of what decides "the same run" (``spa.records``).

``dataset.root`` is left out of the config hash so that moving the data (or the results) keeps
finished runs valid; the fingerprint replaces it: split sizes, class names, ``digest`` (every split's
items and labels: an image file by its path below the root and its size; an in-memory image, as
CIFAR's batches give them, by its bytes) and ``content`` (the same with each file's bytes hashed
too, so a re-exported folder whose files kept their names and sizes is other data). A moved copy of
the same data has the same fingerprint; a subset, another class list or other files never do.

File contents are hashed once: the hashes are cached per data root under the cache directory
(``spa.data.readable.cache_dir``), keyed by each file's size and modification time, so a second
run on the same folder reads no image (runs from before ``content`` was recorded are matched on
the rest, ``spa.records``).
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

from spa.data.datasets import DataBundle, SampleDataset
from spa.data.readable import cache_dir, read_cache, write_cache

log = logging.getLogger(__name__)

CONTENT_VERSION = 1       # bump when file_digest changes: older cache files are then ignored


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file's bytes (16 hex digits), read in 1 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()[:16]


def _content_cache(root: Path) -> Path:
    return cache_dir() / "content" / f"{hashlib.sha256(str(root).encode()).hexdigest()[:16]}.json"


def content_digests(root: Path, paths: list[Path]) -> dict[Path, str]:
    """:func:`file_digest` of each path, re-using the cached digest of every file under ``root`` whose
    size and modification time are unchanged; the cache is rewritten when anything changed."""
    cache = _content_cache(root)
    known = read_cache(cache, CONTENT_VERSION)
    entries, digests, hashed = {}, {}, 0
    for path in paths:
        st, key = os.stat(path), str(path)
        old = known.get(key)
        if isinstance(old, list) and len(old) == 3 and old[:2] == [st.st_size, st.st_mtime_ns]:
            entries[key] = old
        else:
            entries[key] = [st.st_size, st.st_mtime_ns, file_digest(path)]
            hashed += 1
        digests[path] = entries[key][2]
    if hashed:
        log.info("hashed the contents of %d files under %s (cached in %s)", hashed, root, cache)
    if hashed or not entries.keys() <= known.keys():
        write_cache(cache, CONTENT_VERSION, root, {**known, **entries}, "content digest")
    return digests


def _digest_split(h: hashlib._Hash, content: hashlib._Hash, name: str, dataset: SampleDataset | None,
                  root: Path) -> None:
    samples = dataset.samples if dataset is not None else []
    files = [Path(item) for item, _ in samples if not isinstance(item, np.ndarray)]
    digests = content_digests(root, files) if files else {}
    for hasher in (h, content):
        hasher.update(f"|{name}|".encode())
    for item, label in samples:
        if isinstance(item, np.ndarray):
            data = np.ascontiguousarray(item).tobytes()
            h.update(data)
            content.update(data)
        else:
            path = Path(item)
            try:
                rel = path.resolve().relative_to(root).as_posix()
            except ValueError:
                rel = path.as_posix()
            entry = f"{rel}:{os.stat(path).st_size}"
            h.update(entry.encode())
            content.update(f"{entry}:{digests[path]}".encode())
        for hasher in (h, content):
            hasher.update(f":{label};".encode())


def fingerprint(data: DataBundle, root: str | Path) -> dict[str, Any]:
    """``{"train", "val", "test": sizes, "num_classes", "digest", "content"}`` of a built data set (16 hex
    digits each; the first run on a folder reads every file once, later runs only the changed ones)."""
    root = Path(root).expanduser().resolve()
    classes = "\n".join(data.classes).encode()
    h, content = hashlib.sha256(classes), hashlib.sha256(classes)
    for name in ("train", "val", "test"):
        _digest_split(h, content, name, getattr(data, name), root)
    return {**data.sizes(), "num_classes": data.num_classes, "digest": h.hexdigest()[:16],
            "content": content.hexdigest()[:16]}

