"""`blockmix prepare shards`: tar shards, DALI index files, manifest, and reading them back."""

from __future__ import annotations

import json
import shutil
import tarfile
import time
from pathlib import Path

import numpy as np
import pytest
from nvidia.dali import fn, pipeline_def
from PIL import Image
from wds2idx import IndexCreator

from data_pipeline.index_format import load_index
from data_pipeline.prepare.scan import prepare_index
from data_pipeline.prepare.shards import prepare_shards
from train.cli import main
from train.errors import BlockmixError

MODES = ("RGB", "L", "CMYK")


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An indexed ImageFolder tree: 3 classes, 13 train and 4 val JPEGs of assorted sizes, modes
    and EXIF orientations."""
    root = tmp_path_factory.mktemp("source")
    rng = np.random.default_rng(0)
    for split, n in (("train", 13), ("val", 4)):
        for i in range(n):
            height, width = (int(v) for v in rng.integers(8, 40, 2))
            pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
            path = root / split / f"class{i % 3}" / f"{i}.JPEG"
            path.parent.mkdir(parents=True, exist_ok=True)
            exif = Image.Exif()
            exif[0x0112] = 6 if i % 4 == 1 else 1  # some EXIF-rotated (decoded as stored)
            Image.fromarray(pixels).convert(MODES[i % 3]).save(
                path, quality=90, exif=exif.tobytes()
            )
    prepare_index(root, workers=1)
    return root


@pytest.fixture(scope="module")
def shards(source: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("shards")
    assert (
        main(["prepare", "shards", str(source), str(out), "--shard-size", "5", "--workers", "2"])
        == 0
    )
    return out


def test_layout_and_manifest(shards: Path):
    names = sorted(p.name for p in shards.iterdir())
    assert names == [
        ".blockmix",
        "manifest.json",
        *[f"train-00000{i}.{ext}" for i in range(3) for ext in ("idx", "tar")],
        "val-000000.idx",
        "val-000000.tar",
    ]
    manifest = json.loads((shards / "manifest.json").read_text())
    assert manifest["classes"] == ["class0", "class1", "class2"]
    assert [s["samples"] for s in manifest["splits"]["train"]["shards"]] == [5, 5, 3]
    assert manifest["totals"]["samples"] == 17 and manifest["totals"]["shards"] == 4


def test_samples_read_back_by_offset_equal_the_source_files(source: Path, shards: Path):
    original, packed = load_index(source), load_index(shards)
    assert packed.root == shards and packed.classes == original.classes
    for name, split in packed.splits.items():
        by_content = {
            (source / f).read_bytes(): (label, tuple(size))
            for f, label, size in zip(
                original.splits[name].files,
                original.splits[name].labels.tolist(),
                original.splits[name].sizes.tolist(),
                strict=True,
            )
        }
        assert len(split) == len(by_content)
        for file, label, size, (offset, length) in zip(
            split.files,
            split.labels.tolist(),
            split.sizes.tolist(),
            split.offsets.tolist(),
            strict=True,
        ):
            with (shards / file).open("rb") as stream:
                stream.seek(offset)
                data = stream.read(length)
            assert by_content.pop(data) == (label, tuple(size))
        assert not by_content
    val = original.splits["val"]
    assert packed.splits["val"].labels.tolist() == val.labels.tolist()  # val keeps index order


def test_tar_members_and_idx_files_match_dalis_wds2idx(shards: Path, tmp_path: Path):
    packed = load_index(shards)
    for tar_path in sorted(shards.glob("*.tar")):
        with tarfile.open(tar_path) as tar:
            members = tar.getmembers()
            assert [(m.mtime, m.uid, m.gid, m.uname, m.mode) for m in members] == [
                (0, 0, 0, "", 0o644)
            ] * len(members)
            names = [m.name for m in members]
            assert names[0::2] == [n.replace(".cls", ".jpg") for n in names[1::2]]
            split = packed.splits[tar_path.name.split("-")[0]]
            labels = [int(tar.extractfile(m).read()) for m in members[1::2]]
            in_shard = [i for i, f in enumerate(split.files) if f == tar_path.name]
            assert labels == split.labels[in_shard].tolist()
        reference = tmp_path / f"{tar_path.stem}.idx"
        with IndexCreator(str(tar_path), str(reference), verbose=False) as creator:
            creator.create_index()
        assert tar_path.with_suffix(".idx").read_text() == reference.read_text()


def test_dali_webdataset_reader_reads_the_shards_with_our_index_files(shards: Path):
    packed = load_index(shards)
    train = packed.splits["train"]
    tars = sorted(str(p) for p in shards.glob("train-*.tar"))

    @pipeline_def(batch_size=len(train), num_threads=1, device_id=None)
    def read():
        jpg, cls = fn.readers.webdataset(
            paths=tars,
            index_paths=[t.replace(".tar", ".idx") for t in tars],
            ext=["jpg", "cls"],
            missing_component_behavior="error",
        )
        return fn.decoders.image(jpg, device="cpu", adjust_orientation=False), cls  # as the loader

    pipe = read()
    pipe.build()
    images, labels = pipe.run()
    shapes = [images.at(i).shape for i in range(len(train))]
    assert shapes == [(h, w, 3) for h, w in train.sizes.tolist()]  # grayscale and CMYK too
    assert [int(bytes(labels.at(i))) for i in range(len(train))] == train.labels.tolist()


def test_shards_are_byte_for_byte_reproducible(source: Path, shards: Path, tmp_path: Path):
    prepare_shards(source, tmp_path, shard_size=5, workers=1)
    files = [
        *(p for p in shards.iterdir() if p.is_file()),
        shards / ".blockmix" / "index.json",
        shards / ".blockmix" / "index.npz",
    ]
    for path in files:
        assert (tmp_path / path.relative_to(shards)).read_bytes() == path.read_bytes(), path.name


def _corrupt_copy(shards: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "copy"
    shutil.copytree(shards, copy)
    load_index(copy)  # verifies and caches the checksums of the copy
    time.sleep(0.05)  # let the file clock move on, as a real later change would
    return copy


def _flip_byte(path: Path, at: int) -> None:
    with path.open("r+b") as stream:
        stream.seek(at)
        value = stream.read(1)[0]
        stream.seek(at)
        stream.write(bytes([value ^ 0xFF]))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (
            lambda d: _flip_byte(d / "train-000001.tar", 700),
            r"train-000001\.tar: sha256 differs from .*manifest\.json",
        ),
        (lambda d: _flip_byte(d / "val-000000.idx", 10), r"val-000000\.idx: sha256 differs"),
        (
            lambda d: (d / "train-000002.tar").unlink(),
            r"train-000002\.tar: shard listed in .* is missing",
        ),
        (
            lambda d: (d / "val-000000.tar").write_bytes(
                (d / "val-000000.tar").read_bytes()[:-1024]
            ),
            r"val-000000\.tar: \d+ bytes, but .* says \d+ \(truncated or changed\)",
        ),
        (
            lambda d: (d / "manifest.json").write_text(
                (d / "manifest.json").read_text().replace('"samples": 3', '"samples": 4')
            ),
            r"manifest\.json: split 'train' has 13 samples in the manifest, 14 in its shards",
        ),
        (lambda d: (d / "manifest.json").write_text("{"), r"manifest\.json: unreadable manifest"),
    ],
)
def test_manifest_detects_damage(shards: Path, tmp_path: Path, damage, message):
    copy = _corrupt_copy(shards, tmp_path)
    damage(copy)
    with pytest.raises(BlockmixError, match=message):
        load_index(copy)


def test_bad_shard_requests_are_one_line_errors(source: Path, shards: Path, tmp_path: Path, capsys):
    with pytest.raises(BlockmixError, match="already a folder of shards"):
        prepare_shards(shards, tmp_path / "again", shard_size=5)
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "mine.txt").write_text("keep me")
    assert main(["prepare", "shards", str(source), str(tmp_path / "busy")]) == 2
    assert main(["prepare", "shards", str(source), str(tmp_path / "x"), "--shard-size", "0"]) == 2
    assert capsys.readouterr().err.splitlines() == [
        f"blockmix prepare: error: {tmp_path / 'busy'}: not empty and not a blockmix shard folder; choose an empty OUT",
        "blockmix prepare: error: --shard-size must be >= 1, got 0",
    ]


def test_rewriting_shards_removes_stale_ones(source: Path, tmp_path: Path):
    prepare_shards(source, tmp_path, shard_size=2, workers=1)
    assert (tmp_path / "train-000006.tar").exists()
    prepare_shards(source, tmp_path, shard_size=20, workers=1)
    assert sorted(p.name for p in tmp_path.glob("*.tar")) == ["train-000000.tar", "val-000000.tar"]
    assert not (tmp_path / "train-000006.idx").exists()
    assert len(load_index(tmp_path).splits["train"]) == 13
