"""The dataset index format, written by ``prepare`` and read by the loader: classes and per-split
samples, stored as numpy arrays so that it loads fast.

An index lives in ``FOLDER/.blockmix/``: ``index.json`` (format version, data root, classes, split
sizes and a token) and ``index.npz`` (per split: a table of paths, labels, image sizes and, for
shards, tar offsets). ``FOLDER`` is the dataset root for ``prepare index``, the output folder of
``prepare shards``/``prepare demo``, or the ``--out`` folder for read-only datasets. The data root
is stored relative to ``FOLDER`` when it lies inside it, so a copied dataset keeps working.
"""

from __future__ import annotations

import hashlib
import json
import operator
import os
import re
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np

from data_pipeline.atomic import write_atomic, write_json_atomic
from data_pipeline.errors import BlockmixError
from data_pipeline.manifest import verify_manifest

INDEX_DIR = ".blockmix"
HEADER_FILE = "index.json"
ARRAYS_FILE = "index.npz"
FORMAT = "blockmix-index"
VERSION = 1
SPLIT_NAME = re.compile(r"[A-Za-z0-9_-]+")
_ZIP_DATE = (1980, 1, 1, 0, 0, 0)  # fixed member dates: the same index gives the same bytes


@dataclass(frozen=True)
class Split:
    """The samples of one split, in index order.

    ``files``: per sample, a path relative to `DatasetIndex.root` (an image file or a tar shard).
    ``labels``: int64 (N,). ``sizes``: int32 (N, 2), image (height, width) as stored in the file.
    ``offsets``: int64 (N, 2), (byte offset, byte length) of the image inside its tar shard, or
    None for plain files.
    """

    files: list[str]
    labels: np.ndarray
    sizes: np.ndarray
    offsets: np.ndarray | None

    def __len__(self) -> int:
        return len(self.files)


@dataclass(frozen=True)
class DatasetIndex:
    """Sorted class names (label i is ``classes[i]``) and the splits ("train", "val", ...)."""

    root: Path
    classes: list[str]
    splits: dict[str, Split]


def index_dir(folder: str | Path) -> Path:
    """The folder that holds the index files of ``folder``."""
    return Path(folder).expanduser().absolute() / INDEX_DIR


def save_index(index: DatasetIndex, folder: str | Path) -> Path:
    """Write ``index`` into ``folder/.blockmix/`` (each file atomically); return that folder."""
    folder = Path(folder).expanduser().absolute()
    check_index(index, "index to save")
    arrays: dict[str, np.ndarray] = {}
    for name, split in index.splits.items():
        table, path_ids = _path_runs(split.files)
        if "" in table or "\n" in "".join(table):
            raise BlockmixError(
                f"index to save: split {name!r}: file paths must be non-empty, without newlines"
            )
        arrays[f"{name}.paths"] = np.frombuffer("\n".join(table).encode(), np.uint8)
        arrays[f"{name}.path_ids"] = path_ids
        arrays[f"{name}.labels"] = split.labels
        arrays[f"{name}.sizes"] = split.sizes
        if split.offsets is not None:
            arrays[f"{name}.offsets"] = split.offsets
    token = _token(arrays)
    arrays["token"] = np.array([token])
    header = {
        "format": FORMAT,
        "version": VERSION,
        "root": _stored_root(Path(index.root), folder),
        "classes": list(index.classes),
        "splits": {
            name: {"samples": len(split), "sharded": split.offsets is not None}
            for name, split in index.splits.items()
        },
        "arrays": ARRAYS_FILE,
        "token": token,
    }
    directory = index_dir(folder)
    write_atomic(directory / ARRAYS_FILE, lambda stream: _write_npz(stream, arrays))
    write_json_atomic(directory / HEADER_FILE, header)
    return directory


def load_index(root: str | Path) -> DatasetIndex:
    """Load the index of a prepared folder (``prepare index``, ``prepare shards`` or ``prepare demo``).

    A folder of shards is checked against its manifest (sample counts, sizes and checksums).
    """
    folder = Path(root).expanduser().absolute()
    directory = index_dir(folder)
    if not (directory / HEADER_FILE).is_file():
        raise BlockmixError(_missing_index_message(folder))
    index = _read_index(folder, directory)
    if any(split.offsets is not None for split in index.splits.values()):
        files = {name: split.files for name, split in index.splits.items()}
        verify_manifest(folder, index.classes, files, directory)
    return index


def check_index(index: DatasetIndex, where: str) -> None:
    """Raise `BlockmixError` unless every split's arrays agree in length, type and label range."""
    if not index.classes:
        raise BlockmixError(f"{where}: has no classes")
    for name, split in index.splits.items():
        n = len(split.files)
        problem = None
        if not SPLIT_NAME.fullmatch(name):
            problem = "split names may use letters, digits, '_' and '-' only"
        elif split.labels.dtype != np.int64 or split.labels.shape != (n,):
            problem = f"labels must be int64 of shape ({n},)"
        elif split.sizes.dtype != np.int32 or split.sizes.shape != (n, 2):
            problem = f"sizes must be int32 of shape ({n}, 2)"
        elif split.offsets is not None and (
            split.offsets.dtype != np.int64 or split.offsets.shape != (n, 2)
        ):
            problem = f"offsets must be int64 of shape ({n}, 2)"
        elif n and (split.labels.min() < 0 or split.labels.max() >= len(index.classes)):
            problem = f"labels must lie in [0, {len(index.classes)})"
        if problem:
            raise BlockmixError(f"{where}: split {name!r}: {problem}")


def _read_index(folder: Path, directory: Path) -> DatasetIndex:
    header_path = directory / HEADER_FILE
    redo = "prepare the folder again with `blockmix prepare`"
    try:
        header = json.loads(header_path.read_text())
        if header.get("format") != FORMAT or header.get("version") != VERSION:
            raise BlockmixError(
                f"{header_path}: not a {FORMAT} v{VERSION} file (format "
                f"{header.get('format')!r}, version {header.get('version')!r}); {redo}"
            )
        arrays = np.load(directory / header["arrays"], allow_pickle=False)
        with arrays:
            if str(arrays["token"][0]) != header["token"]:
                raise BlockmixError(
                    f"{directory / header['arrays']} does not belong to {header_path} "
                    f"(interrupted or mixed copy); {redo}"
                )
            splits = {
                name: _read_split(arrays, name, info["sharded"])
                for name, info in header["splits"].items()
            }
        index = DatasetIndex(
            root=Path(os.path.normpath(folder / header["root"])),
            classes=list(header["classes"]),
            splits=splits,
        )
    except (OSError, ValueError, KeyError, TypeError, zipfile.BadZipFile) as error:
        raise BlockmixError(f"{directory}: unreadable index ({error}); {redo}") from error
    check_index(index, str(header_path))
    if not index.root.is_dir():
        raise BlockmixError(
            f"{header_path}: its data folder {index.root} is missing (moved?); {redo}"
        )
    for name, info in header["splits"].items():
        if len(index.splits[name]) != info["samples"]:
            raise BlockmixError(
                f"{header_path}: split {name!r} size differs from its arrays; {redo}"
            )
    return index


def _read_split(arrays: np.lib.npyio.NpzFile, name: str, sharded: bool) -> Split:
    blob = arrays[f"{name}.paths"].tobytes().decode()
    table = blob.split("\n") if blob else []
    path_ids = arrays[f"{name}.path_ids"]
    files = (
        table if len(table) == len(path_ids) else list(map(table.__getitem__, path_ids.tolist()))
    )
    return Split(
        files=files,
        labels=arrays[f"{name}.labels"],
        sizes=arrays[f"{name}.sizes"],
        offsets=arrays[f"{name}.offsets"] if sharded else None,
    )


def _path_runs(files: list[str]) -> tuple[list[str], np.ndarray]:
    """Run-length code of ``files``: the path of each run of equal neighbours and, per sample, its
    run number (a shard's samples share one path; distinct image files stay one run each)."""
    starts = np.ones(len(files), bool)
    starts[1:] = np.fromiter(map(operator.ne, files[1:], files[:-1]), bool, max(len(files) - 1, 0))
    table = [files[i] for i in np.flatnonzero(starts).tolist()]
    return table, (np.cumsum(starts) - 1).astype(np.int32)


def _write_npz(stream: BinaryIO, arrays: dict[str, np.ndarray]) -> None:
    """An uncompressed .npz (what `np.load` reads) with fixed member dates."""
    with zipfile.ZipFile(stream, "w", zipfile.ZIP_STORED) as archive:
        for name, array in arrays.items():
            info = zipfile.ZipInfo(f"{name}.npy", date_time=_ZIP_DATE)
            with archive.open(info, "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.ascontiguousarray(array), allow_pickle=False)


def _token(arrays: dict[str, np.ndarray]) -> str:
    """A content hash that ties index.npz to its index.json."""
    digest = hashlib.sha256()
    for name in sorted(arrays):
        array = np.ascontiguousarray(arrays[name])
        digest.update(f"{name}:{array.dtype.str}:{array.shape};".encode())
        digest.update(array.data)
    return digest.hexdigest()


def _stored_root(root: Path, folder: Path) -> str:
    root = root.expanduser().absolute()
    try:
        return root.relative_to(folder).as_posix()
    except ValueError:
        return str(root)


def _missing_index_message(folder: Path) -> str:
    if not folder.exists():
        return f"{folder} does not exist"
    if (folder / "train").is_dir():
        return (
            f"{folder} is an ImageFolder tree without an index; "
            f"run `blockmix prepare index {folder}` first"
        )
    return (
        f"{folder} holds no blockmix index ({INDEX_DIR}/{HEADER_FILE}); prepare it with "
        "`blockmix prepare index`, `blockmix prepare shards` or `blockmix prepare demo`"
    )
