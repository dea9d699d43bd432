"""`blockmix prepare shards`: pack an index's samples into WebDataset tar shards.

Each split becomes ``<split>-NNNNNN.tar`` shards of ``shard_size`` samples (train in a fixed
shuffled order from ``seed``, other splits in index order). A sample is two members,
``<split>_NNNNNNNN.jpg`` (the image file's bytes, unchanged) and ``<split>_NNNNNNNN.cls`` (the
label as ASCII decimal, the WebDataset convention). Member metadata is fixed (mtime 0, uid/gid 0,
mode 644), so the same index gives byte-identical shards. Beside each shard, ``.idx`` is the index
file DALI's ``fn.readers.webdataset`` takes as ``index_paths`` (the format of DALI's ``wds2idx``).
``manifest.json`` lists per shard its sample count, size and sha256; ``.blockmix/`` holds the
index (with tar offsets) that `load_index` reads and verifies against the manifest.
"""

from __future__ import annotations

import io
import tarfile
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from tqdm import tqdm

from data_pipeline.atomic import (
    writable_folder,
    write_atomic,
    write_bytes_atomic,
    write_json_atomic,
)
from data_pipeline.errors import BlockmixError
from data_pipeline.index_format import DatasetIndex, Split, load_index, save_index
from data_pipeline.manifest import (
    FORMAT,
    MANIFEST_FILE,
    VERSION,
    read_manifest,
    sha256_file,
)
from data_pipeline.prepare.check import default_workers

WDS_INDEX_VERSION = "v1.2"  # the index format of DALI's wds2idx
_TAR_BLOCK = 512
_SHUFFLED_SPLITS = ("train",)


@dataclass(frozen=True)
class Member:
    """One tar member as DALI's index lists it: extension, data offset, size, name."""

    ext: str
    offset: int
    size: int
    name: str


@dataclass(frozen=True)
class _Shard:
    """One shard to write: ``order`` lists the split's source samples it holds, in tar order;
    ``first`` is the position of its first sample in the sharded split."""

    split: str
    stem: str
    order: np.ndarray
    first: int


@dataclass(frozen=True)
class PreparedShards:
    """What ``prepare_shards`` wrote."""

    index: DatasetIndex
    manifest: dict


def prepare_shards(
    root: str | Path,
    out: str | Path,
    shard_size: int,
    seed: int = 0,
    workers: int | None = None,
) -> PreparedShards:
    """Pack the index of ``root`` into shards, DALI index files, a manifest and an index in ``out``."""
    if shard_size < 1:
        raise BlockmixError(f"--shard-size must be >= 1, got {shard_size}")
    source = load_index(root)
    if any(split.offsets is not None for split in source.splits.values()):
        raise BlockmixError(f"{root}: already a folder of shards; give the indexed image folder")
    out = Path(out).expanduser().absolute()
    stale = _previous_files(out)
    writable_folder(out, "cannot write shards here; choose a writable OUT")
    plan = []
    for name, split in source.splits.items():
        order = _sample_order(name, len(split), seed)
        for number, first in enumerate(range(0, len(split), shard_size)):
            plan.append(
                _Shard(name, f"{name}-{number:06d}", order[first : first + shard_size], first)
            )
    total = sum(len(split) for split in source.splits.values())
    with ThreadPoolExecutor(max_workers=workers or default_workers()) as pool:
        written = pool.map(lambda shard: _write_shard(source, out, shard), plan)
        bar = tqdm(
            written, total=len(plan), desc="writing shards", unit="shard", disable=total < 2000
        )
        results = dict(zip((shard.stem for shard in plan), bar, strict=True))
    splits, entries = {}, {}
    for name, split in source.splits.items():
        mine = [shard for shard in plan if shard.split == name]
        order = np.concatenate([shard.order for shard in mine] or [np.zeros(0, np.int64)])
        splits[name] = Split(
            files=[f"{shard.stem}.tar" for shard in mine for _ in shard.order],
            labels=split.labels[order],
            sizes=split.sizes[order],
            offsets=np.concatenate(
                [results[s.stem][1] for s in mine] or [np.zeros((0, 2), np.int64)]
            ),
        )
        entries[name] = {"samples": len(order), "shards": [results[s.stem][0] for s in mine]}
    index = DatasetIndex(root=out, classes=source.classes, splits=splits)
    manifest = _manifest(index, entries, shard_size, seed)
    save_index(index, out)
    write_json_atomic(out / MANIFEST_FILE, manifest)
    for path in stale - {out / e["tar"] for v in entries.values() for e in v["shards"]}:
        path.unlink(missing_ok=True)
        path.with_suffix(".idx").unlink(missing_ok=True)
    return PreparedShards(index, manifest)


def wds_index_text(samples: list[list[Member]]) -> str:
    """The DALI webdataset index of a tar: a version line, then one line per sample listing its
    members as ``ext offset size name``."""
    lines = [f"{WDS_INDEX_VERSION} {len(samples)}"]
    lines += [
        " ".join(f"{m.ext} {m.offset} {m.size} {m.name}" for m in sample) for sample in samples
    ]
    return "\n".join(lines) + "\n"


def _write_shard(source: DatasetIndex, out: Path, shard: _Shard) -> tuple[dict, np.ndarray]:
    """Write one shard's .tar and .idx; return its manifest entry and its images' tar offsets."""
    split = source.splits[shard.split]
    samples: list[list[Member]] = []

    def write(stream: BinaryIO) -> None:
        with tarfile.open(fileobj=stream, mode="w", format=tarfile.USTAR_FORMAT) as tar:
            for i in shard.order.tolist():
                key = f"{shard.split}_{shard.first + len(samples):08d}"
                image = _read_source(source.root / split.files[i])
                samples.append(
                    [
                        _add_member(tar, f"{key}.jpg", image),
                        _add_member(tar, f"{key}.cls", str(int(split.labels[i])).encode()),
                    ]
                )

    tar_path, idx_path = out / f"{shard.stem}.tar", out / f"{shard.stem}.idx"
    write_atomic(tar_path, write)
    write_bytes_atomic(idx_path, wds_index_text(samples).encode())
    entry = {
        "tar": tar_path.name,
        "idx": idx_path.name,
        "samples": len(samples),
        "bytes": tar_path.stat().st_size,
        "sha256": sha256_file(tar_path),
        "idx_sha256": sha256_file(idx_path),
    }
    return entry, np.array([(s[0].offset, s[0].size) for s in samples], np.int64).reshape(-1, 2)


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> Member:
    info = tarfile.TarInfo(name)
    info.size, info.mtime, info.mode = len(data), 0, 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    header_at = tar.offset
    tar.addfile(info, io.BytesIO(data))
    return Member(name.rsplit(".", 1)[1], header_at + _TAR_BLOCK, len(data), name)


def _read_source(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise BlockmixError(
            f"{path}: cannot read an indexed image ({error.strerror}); rerun `blockmix prepare index`"
        ) from error


def _sample_order(split_name: str, n: int, seed: int) -> np.ndarray:
    if split_name in _SHUFFLED_SPLITS:
        return np.random.default_rng(seed).permutation(n)
    return np.arange(n)


def _previous_files(out: Path) -> set[Path]:
    """Shards of an earlier run in ``out`` (to remove if not rewritten); refuse other non-empty folders."""
    if not out.exists() or not any(out.iterdir()):
        return set()
    if not (out / MANIFEST_FILE).is_file():
        raise BlockmixError(
            f"{out}: not empty and not a blockmix shard folder; choose an empty OUT"
        )
    manifest = read_manifest(out)
    return {out / e["tar"] for split in manifest["splits"].values() for e in split["shards"]}


def _manifest(index: DatasetIndex, entries: dict, shard_size: int, seed: int) -> dict:
    shards = [e for split in entries.values() for e in split["shards"]]
    return {
        "format": FORMAT,
        "version": VERSION,
        "classes": index.classes,
        "shard_size": shard_size,
        "seed": seed,
        "members": ["jpg", "cls"],
        "splits": entries,
        "totals": {
            "samples": sum(e["samples"] for e in shards),
            "shards": len(shards),
            "bytes": sum(e["bytes"] for e in shards),
        },
    }
