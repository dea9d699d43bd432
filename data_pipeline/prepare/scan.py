"""`blockmix prepare index`: scan an ImageFolder tree (or DALI-style file lists), check every file,
and write the index plus a report of the files left out and the oddities kept.

ImageFolder: ``ROOT/train/<class>/**`` (required) and ``ROOT/val/<class>/**``; classes are the
sorted train folders (empty ones included, and reported), val labels use the train classes.
File lists: ``NAME=PATH`` per split, lines ``relative/path label`` (paths relative to ROOT, labels
0..C-1); class names are the zero-padded label numbers.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from data_pipeline.atomic import writable_folder, write_json_atomic
from data_pipeline.errors import BlockmixError
from data_pipeline.index_format import SPLIT_NAME, DatasetIndex, Split, index_dir, save_index
from data_pipeline.prepare.check import DECODE_PIXEL_LIMIT, ImageCheck, check_images

REPORT_FILE = "index_report.json"
IMAGE_FOLDER_SPLITS = ("train", "val")


@dataclass(frozen=True)
class Candidates:
    """The files a split lists, before checking, and the class folders it has."""

    files: list[str]
    labels: list[int]
    class_names: list[str]
    loops: list[dict] = field(default_factory=list)


@dataclass(frozen=True)
class PreparedIndex:
    """What ``prepare_index`` wrote and found."""

    index: DatasetIndex
    index_dir: Path
    report_path: Path
    report: dict


def prepare_index(
    root: str | Path,
    out: str | Path | None = None,
    file_lists: dict[str, str | Path] | None = None,
    workers: int | None = None,
    decode_pixel_limit: int = DECODE_PIXEL_LIMIT,
) -> PreparedIndex:
    """Scan ``root``, check every file, and write the index and its report into ``out`` (default
    ``root``)/.blockmix/. A `BlockmixError` names what is wrong with the tree or a list."""
    root = Path(root).expanduser().absolute()
    if not root.is_dir():
        raise BlockmixError(f"{root}: not a folder")
    folder = Path(out).expanduser().absolute() if out is not None else root
    writable_folder(
        index_dir(folder), "cannot write the index here; pass --out DIR for a read-only dataset"
    )
    if file_lists:
        classes, candidates = _from_file_lists(root, {k: Path(v) for k, v in file_lists.items()})
    else:
        classes, candidates = _from_image_folder(root)
    paths = [str(root / f) for split in candidates.values() for f in split.files]
    checks = iter(check_images(paths, workers, decode_pixel_limit))
    splits, report = {}, _empty_report(decode_pixel_limit)
    for name, split in candidates.items():
        splits[name] = _checked_split(
            name, split, [next(checks) for _ in split.files], classes, report
        )
    report["symlink_loops"] = [loop for split in candidates.values() for loop in split.loops]
    index = DatasetIndex(root=root, classes=classes, splits=splits)
    report_path = index_dir(folder) / REPORT_FILE
    write_json_atomic(report_path, report)
    if not len(splits["train"]):
        raise BlockmixError(
            f"{root}: no usable train image ({len(paths)} files checked); see {report_path}"
        )
    return PreparedIndex(index, save_index(index, folder), report_path, report)


def summary_lines(prepared: PreparedIndex) -> list[str]:
    """A short human summary of what ``prepare_index`` found, ending with where things are."""
    report = prepared.report
    counts = ", ".join(f"{info['kept']} {name}" for name, info in report["splits"].items())
    lines = [f"indexed {counts} samples of {len(prepared.index.classes)} classes"]
    if report["left_out"]:
        reasons = Counter(entry["reason"].split(" (")[0] for entry in report["left_out"])
        lines.append(
            f"left out {len(report['left_out'])} files: "
            + ", ".join(f"{n} {reason}" for reason, n in reasons.most_common())
        )
    if report["notes"]:
        modes = Counter()
        for info in report["splits"].values():
            modes.update(info["modes"])
        lines.append(
            f"kept {len(report['notes'])} files with oddities (modes, formats, huge images); "
            f"modes: {', '.join(f'{mode} {n}' for mode, n in modes.most_common())}"
        )
    if report["symlink_loops"]:
        first = report["symlink_loops"][0]
        lines.append(
            f"warning: skipped {len(report['symlink_loops'])} symlinked folders already visited "
            f"(loops or repeats), e.g. {first['link']} -> {first['target']}"
        )
    for name, info in report["splits"].items():
        if info["empty_classes"]:
            shown = ", ".join(info["empty_classes"][:5]) + (
                ", ..." if len(info["empty_classes"]) > 5 else ""
            )
            lines.append(f"warning: {len(info['empty_classes'])} empty {name} classes: {shown}")
    lines += [f"index: {prepared.index_dir}", f"report: {prepared.report_path}"]
    return lines


def _from_image_folder(root: Path) -> tuple[list[str], dict[str, Candidates]]:
    if not (root / "train").is_dir():
        raise BlockmixError(
            f"{root}: no train/ folder; an ImageFolder tree has train/<class>/* and val/<class>/* "
            "(or pass --file-list train=PATH)"
        )
    candidates = {
        name: _scan_split(root, name) for name in IMAGE_FOLDER_SPLITS if (root / name).is_dir()
    }
    classes = candidates["train"].class_names
    if not classes:
        raise BlockmixError(f"{root / 'train'}: no class folders")
    known = {name: label for label, name in enumerate(classes)}
    relabelled = {}
    for name, split in candidates.items():
        absent = sorted(set(split.class_names) - set(known))
        if absent:
            raise BlockmixError(
                f"{root / name}: class folder {absent[0]!r} is absent from train/"
                + (f" (and {len(absent) - 1} more)" if len(absent) > 1 else "")
                + "; labels come from the train classes, so remove or rename it"
            )
        labels = [known[split.class_names[i]] for i in split.labels]
        relabelled[name] = Candidates(split.files, labels, split.class_names, split.loops)
    return classes, relabelled


def _scan_split(root: Path, name: str) -> Candidates:
    """Every file under ``root/name/<class>/`` (recursively, sorted); labels index the split's
    own class folders until `_from_image_folder` maps them to the train classes. Symlinked
    folders are followed, but never into a folder the split has already visited."""
    split_dir = root / name
    class_names = sorted(
        e.name for e in os.scandir(split_dir) if e.is_dir() and not e.name.startswith(".")
    )
    files, labels, loops = [], [], []
    # the class folders and every folder above them count as visited from the start: a link to
    # one of them is a loop or would give another class's images this class's label
    above = [split_dir / c for c in class_names] + [split_dir, *split_dir.parents]
    visited = {(st.st_dev, st.st_ino) for st in map(os.stat, above)}
    for label, class_name in enumerate(class_names):
        for path in _walk(split_dir / class_name, visited, loops, root, name):
            files.append(path.relative_to(root).as_posix())
            labels.append(label)
    return Candidates(files, labels, class_names, loops)


def _walk(
    folder: Path, visited: set[tuple[int, int]], loops: list[dict], root: Path, split: str
) -> Iterator[Path]:
    """The files of ``folder`` (sorted), then those of its subfolders, depth first, as
    ``os.walk(followlinks=True)`` orders them; a folder whose (device, inode) is already in
    ``visited`` is skipped and recorded in ``loops``."""
    try:
        stat = folder.stat()
        entries = sorted(os.scandir(folder), key=lambda e: e.name)
    except OSError:
        return
    visited.add((stat.st_dev, stat.st_ino))
    subfolders = []
    for entry in entries:
        try:
            is_dir = entry.is_dir()
        except OSError:
            is_dir = False
        if is_dir:
            subfolders.append(entry)
        else:
            yield Path(entry.path)
    for entry in subfolders:
        try:
            target = os.stat(entry.path)
        except OSError:
            continue
        if (target.st_dev, target.st_ino) in visited:
            loops.append(
                {
                    "split": split,
                    "link": Path(entry.path).relative_to(root).as_posix(),
                    "target": os.path.realpath(entry.path),
                }
            )
            continue
        yield from _walk(Path(entry.path), visited, loops, root, split)


def _from_file_lists(root: Path, lists: dict[str, Path]) -> tuple[list[str], dict[str, Candidates]]:
    if "train" not in lists:
        raise BlockmixError("--file-list: a train list is required (--file-list train=PATH)")
    for name in lists:
        if not SPLIT_NAME.fullmatch(name):
            raise BlockmixError(
                f"--file-list {name}=...: split names may use letters, digits, '_' and '-'"
            )
    parsed = {name: _parse_file_list(path) for name, path in lists.items()}
    train_labels = parsed["train"][1]
    if not train_labels:
        raise BlockmixError(f"{lists['train']}: the train list is empty")
    n_classes = max(train_labels) + 1
    width = len(str(n_classes - 1))
    classes = [str(label).zfill(width) for label in range(n_classes)]
    candidates = {}
    for name, (files, labels, lines) in parsed.items():
        for label, line in zip(labels, lines, strict=True):
            if label >= n_classes:
                raise BlockmixError(
                    f"{lists[name]}:{line}: label {label} is absent from the train list "
                    f"(train labels are 0..{n_classes - 1})"
                )
        candidates[name] = Candidates(files, labels, classes)
    return classes, candidates


def _parse_file_list(path: Path) -> tuple[list[str], list[int], list[int]]:
    """(files, labels, line numbers) of a DALI file_list: ``relative/path label`` per line."""
    try:
        text = path.read_text()
    except OSError as error:
        raise BlockmixError(f"{path}: cannot read the file list ({error.strerror})") from error
    files, labels, lines = [], [], []
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2 or not parts[1].isdigit():
            raise BlockmixError(
                f"{path}:{number}: expected 'relative/path label' with label >= 0, got {line!r}"
            )
        if Path(parts[0]).is_absolute():
            raise BlockmixError(
                f"{path}:{number}: {parts[0]!r} must be relative to the dataset root"
            )
        if ".." in Path(parts[0]).parts:
            raise BlockmixError(
                f"{path}:{number}: {parts[0]!r} climbs out of the dataset root with '..'; "
                "list paths inside it"
            )
        files.append(Path(parts[0].strip()).as_posix())
        labels.append(int(parts[1]))
        lines.append(number)
    return files, labels, lines


def _checked_split(
    name: str, split: Candidates, checks: list[ImageCheck], classes: list[str], report: dict
) -> Split:
    """The kept samples of one split; left-out files and oddities go into ``report``."""
    kept = [i for i, check in enumerate(checks) if check.ok]
    for file, check in zip(split.files, checks, strict=True):
        if not check.ok:
            report["left_out"].append({"split": name, "file": file, "reason": check.reason})
        elif check.note:
            report["notes"].append({"split": name, "file": file, "note": check.note})
    labels = np.asarray(split.labels, np.int64)[kept] if kept else np.zeros(0, np.int64)
    present = set(split.class_names)
    counts = np.bincount(labels, minlength=len(classes))
    report["splits"][name] = {
        "kept": len(kept),
        "left_out": len(checks) - len(kept),
        "empty_classes": [
            c for c, n in zip(classes, counts, strict=True) if n == 0 and c in present
        ],
        "modes": dict(Counter(checks[i].mode for i in kept)),
        "formats": dict(Counter(checks[i].format for i in kept)),
    }
    return Split(
        files=[split.files[i] for i in kept],
        labels=labels,
        sizes=np.array([(checks[i].height, checks[i].width) for i in kept], np.int32).reshape(
            -1, 2
        ),
        offsets=None,
    )


def _empty_report(decode_pixel_limit: int) -> dict:
    return {
        "decode_pixel_limit": decode_pixel_limit,
        "splits": {},
        "left_out": [],
        "notes": [],
        "symlink_loops": [],
    }
