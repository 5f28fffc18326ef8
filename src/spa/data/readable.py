"""Which image files PIL can read, checked when a data set is built rather than mid-epoch.

Every file-based reader (image folders, Cats & Dogs) passes its samples through :func:`drop_unreadable`:
one rule, one stats record (``unreadable_removed``, ``converted_to_rgb``), one error. Results are cached
per data root under :func:`cache_dir`, keyed by file path, size and mtime, so a second build re-checks
only files that changed.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from PIL import Image

from spa.utils import atomic_write_text

log = logging.getLogger(__name__)

CHECK_VERSION = 1          # bump when check_image changes: older cache files are then ignored
SHOWN = 5                  # bad files named in the error message; the rest are counted
Sample = tuple[Any, int]
Status = tuple[str, str]   # (PIL mode, "") for a readable file, ("", reason) for an unreadable one


class UnreadableImagesError(ValueError):
    """Some image files cannot be read; the message lists them and names ``dataset.skip_unreadable=true``."""


def cache_dir() -> Path:
    """``$SPA_CACHE_DIR``, else ``$XDG_CACHE_HOME/spa``, else ``~/.cache/spa``: never the data root,
    which may be read-only or shared between users."""
    if os.environ.get("SPA_CACHE_DIR"):
        return Path(os.environ["SPA_CACHE_DIR"]).expanduser()
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "spa"


def check_image(path: str | Path) -> Status:
    """Cheap readability check. PNG: ``verify()`` (every chunk's CRC, through IEND, no inflate). JPEG: a
    decode at 1/8 scale (``draft``), which still reads every byte and so catches truncation, which
    ``verify()`` does not. Other formats: a full ``load()`` (their ``verify()`` checks little)."""
    try:
        with Image.open(path) as img:
            mode = img.mode
            if img.format == "PNG":
                img.verify()
            else:
                img.draft(None, (1, 1))   # no-op except for JPEG
                img.load()
        return mode, ""
    except Exception as err:  # PIL raises many types for broken files
        return "", str(err).replace(f" {os.fspath(path)!r}", "") or type(err).__name__


def _cache_file(root: Path) -> Path:
    return cache_dir() / "readable" / f"{hashlib.sha256(str(root.resolve()).encode()).hexdigest()[:16]}.json"


def read_cache(path: Path, version: int) -> dict[str, Any]:
    """The ``files`` of a per-root cache file written by :func:`write_cache` at ``version``; {} where it is
    missing, unreadable or of another version."""
    try:
        stored = json.loads(path.read_text())
        return stored["files"] if stored.get("version") == version else {}
    except (OSError, ValueError, KeyError):
        return {}


def write_cache(path: Path, version: int, root: Path, files: dict[str, Any], what: str) -> None:
    """Write a per-root cache file; an unwritable cache dir is a warning: the results are right, just not kept."""
    blob = json.dumps({"version": version, "root": str(root), "files": files}, separators=(",", ":"))
    try:
        atomic_write_text(path, blob)
    except OSError as err:
        log.warning("could not write the %s cache %s: %s", what, path, err)


def scan(root: Path, paths: list[str]) -> dict[str, Status]:
    """:func:`check_image` of each path (files under ``root``), re-using the cached result of every
    file whose size and mtime are unchanged; the cache is rewritten when anything changed."""
    cache = _cache_file(root)
    known = read_cache(cache, CHECK_VERSION)
    rels = [str(Path(path).relative_to(root)) for path in paths]
    entries: dict[str, list] = {}
    todo: list[int] = []
    for i, (path, rel) in enumerate(zip(paths, rels)):
        st, old = os.stat(path), known.get(rel)
        if isinstance(old, list) and len(old) == 4 and old[:2] == [st.st_size, st.st_mtime_ns]:
            entries[rel] = old
        else:
            entries[rel] = [st.st_size, st.st_mtime_ns]
            todo.append(i)
    if todo:
        log.info("checking %d image files under %s (cached in %s)", len(todo), root, cache)
        with ThreadPoolExecutor(min(8, os.cpu_count() or 1)) as pool:   # PIL decodes without the GIL
            for i, status in zip(todo, pool.map(check_image, [paths[i] for i in todo])):
                entries[rels[i]] += list(status)
    if todo or entries.keys() != known.keys():
        write_cache(cache, CHECK_VERSION, root.resolve(), entries, "image check")
    return {path: (entries[rel][2], entries[rel][3]) for path, rel in zip(paths, rels)}


def drop_unreadable(root: Path, splits: list[list[Sample]], skip: bool) -> tuple[list[list[Sample]], dict[str, int]]:
    """``splits`` (lists of ``(path, label)`` under ``root``) without unreadable files, and the stats record
    ``{"unreadable_removed": n, "converted_to_rgb": m}``. Raises :class:`UnreadableImagesError` listing
    the bad files instead, unless ``skip``."""
    status = scan(root, [path for split in splits for path, _ in split])
    bad = [path for path, (_, reason) in status.items() if reason]
    named = ", ".join(f"{Path(p).relative_to(root)} ({status[p][1]})" for p in bad[:SHOWN])
    named += f" and {len(bad) - SHOWN} more" if len(bad) > SHOWN else ""
    if bad and not skip:
        raise UnreadableImagesError(
            f"{len(bad)} of {len(status)} image files under {root} cannot be read: {named}. Fix or delete them, "
            f"or run with dataset.skip_unreadable=true to leave them out (counted in data.unreadable_removed).")
    if bad:
        log.warning("skipping %d unreadable image files under %s: %s", len(bad), root, named)
    kept = [[s for s in split if not status[s[0]][1]] for split in splits]
    converted = sum(status[path][0] != "RGB" for split in kept for path, _ in split)
    return kept, {"unreadable_removed": len(bad), "converted_to_rgb": converted}
