"""The manifest of a shard folder (``manifest.json``) and its verification against the index.

Checksums of unchanged files are remembered in the index folder's ``verified.json`` (keyed by
size, mtime, ctime and inode), so a shard is hashed again only when its file changes or is copied; where the
folder is read-only, every load hashes every shard.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
from collections import Counter
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from data_pipeline.atomic import write_json_atomic
from data_pipeline.errors import BlockmixError

MANIFEST_FILE = "manifest.json"
FORMAT = "blockmix-shards"
VERSION = 1
_CACHE_FILE = "verified.json"
_CHUNK = 1 << 20


def sha256_file(path: Path) -> str:
    """The hex sha256 of a file's bytes."""
    digest = hashlib.sha256()
    with path.open("rb") as stream:
        while chunk := stream.read(_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def read_manifest(folder: Path) -> dict[str, Any]:
    """The parsed ``manifest.json`` of a shard folder; a `BlockmixError` if unreadable."""
    path = folder / MANIFEST_FILE
    redo = "rerun `blockmix prepare shards`"
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise BlockmixError(f"{path}: unreadable manifest ({error}); {redo}") from error
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise BlockmixError(f"{path}: not a {FORMAT} manifest; {redo}")
    if manifest.get("version") != VERSION:
        raise BlockmixError(
            f"{path}: manifest version {manifest.get('version')!r} is not {VERSION}; {redo}"
        )
    return manifest


def verify_manifest(
    folder: Path, classes: list[str], files: Mapping[str, Sequence[str]], cache_dir: Path
) -> None:
    """Check the shards of ``folder`` against its manifest and an index's ``classes`` and per-split
    sample ``files`` (a shard path per sample): counts, sizes, sha256.

    Checksums of unchanged files are remembered in ``cache_dir/verified.json``.
    """
    manifest = read_manifest(folder)
    where = folder / MANIFEST_FILE
    try:
        if manifest["classes"] != classes:
            raise BlockmixError(
                f"{where}: classes differ from the index; rerun `blockmix prepare shards`"
            )
        if set(manifest["splits"]) != set(files):
            raise BlockmixError(
                f"{where}: splits {sorted(manifest['splits'])} differ from the index's "
                f"{sorted(files)}; rerun `blockmix prepare shards`"
            )
        expected: dict[str, str] = {}
        for name, entry in manifest["splits"].items():
            _check_counts(where, name, entry, Counter(files[name]))
            for shard in entry["shards"]:
                _check_size(folder, shard["tar"], shard["bytes"], where)
                expected[shard["tar"]] = shard["sha256"]
                expected[shard["idx"]] = shard["idx_sha256"]
    except (KeyError, TypeError) as error:
        raise BlockmixError(
            f"{where}: malformed manifest (missing {error}); rerun `blockmix prepare shards`"
        ) from error
    actual = _cached_checksums(folder, sorted(expected), cache_dir / _CACHE_FILE)
    for name, digest in expected.items():
        if actual[name] != digest:
            raise BlockmixError(
                f"{folder / name}: sha256 differs from {where} (changed or corrupt file); "
                "copy it again or rerun `blockmix prepare shards`"
            )


def _check_counts(where: Path, name: str, entry: dict[str, Any], per_file: Counter[str]) -> None:
    listed = {shard["tar"]: shard["samples"] for shard in entry["shards"]}
    if entry["samples"] != sum(listed.values()) or entry["samples"] != sum(per_file.values()):
        raise BlockmixError(
            f"{where}: split {name!r} has {entry['samples']} samples in the manifest, "
            f"{sum(listed.values())} in its shards and {sum(per_file.values())} in the index; "
            "rerun `blockmix prepare shards`"
        )
    for tar, samples in listed.items():
        if per_file.get(tar, 0) != samples:
            raise BlockmixError(
                f"{where}: shard {tar} has {samples} samples in the manifest but "
                f"{per_file.get(tar, 0)} in the index; rerun `blockmix prepare shards`"
            )


def _check_size(folder: Path, name: str, size: int, where: Path) -> None:
    path = folder / name
    if not path.is_file():
        raise BlockmixError(f"{path}: shard listed in {where} is missing")
    if path.stat().st_size != size:
        raise BlockmixError(
            f"{path}: {path.stat().st_size} bytes, but {where} says {size} (truncated or changed); "
            "copy it again or rerun `blockmix prepare shards`"
        )


def _cached_checksums(folder: Path, names: list[str], cache_path: Path) -> dict[str, str]:
    """sha256 of each file, reusing the cached value where the file's stamp has not changed."""
    try:
        cache = json.loads(cache_path.read_text())
    except (OSError, ValueError):
        cache = {}
    stamps = {name: _stamp(folder / name) for name in names}
    stale = [name for name in names if not _cache_hit(cache.get(name), stamps[name])]
    with ThreadPoolExecutor(max_workers=min(8, os.cpu_count() or 1)) as pool:
        for name, digest in zip(
            stale, pool.map(sha256_file, (folder / n for n in stale)), strict=True
        ):
            cache[name] = {"stamp": stamps[name], "sha256": digest}
    if stale:
        with contextlib.suppress(OSError):  # a read-only folder: hash again next time
            write_json_atomic(cache_path, {name: cache[name] for name in names})
    return {name: cache[name]["sha256"] for name in names}


def _stamp(path: Path) -> list[int]:
    stat = path.stat()
    return [stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_ino]


def _cache_hit(entry: Any, stamp: list[int]) -> bool:
    return isinstance(entry, dict) and entry.get("stamp") == stamp and "sha256" in entry
