"""`blockmix prepare index` and the index API: oddities of real image files, file lists, storage."""

from __future__ import annotations

import io
import json
import shutil
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_pipeline.index_format import DatasetIndex, Split, load_index, save_index
from data_pipeline.prepare.scan import prepare_index, summary_lines
from train.cli import main
from train.errors import BlockmixError

LIMIT = 2000  # decode_pixel_limit for the oddity tree: only big.JPEG and huge.png exceed it


def _image(
    path: Path, size: tuple[int, int], mode: str = "RGB", fmt: str = "JPEG", orientation: int = 0
) -> bytes:
    """A real image of ``size`` (width, height) with some structure, saved as ``fmt``."""
    x, y = np.meshgrid(np.arange(size[0]), np.arange(size[1]))
    pixels = np.stack([x * 7 % 256, y * 5 % 256, (x + y) * 3 % 256], -1).astype(np.uint8)
    buffer = io.BytesIO()
    exif = Image.Exif()
    if orientation:
        exif[0x0112] = orientation
    options = {"exif": exif.tobytes()} if orientation else {}
    Image.fromarray(pixels, "RGB").convert(mode).save(buffer, fmt, **options)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buffer.getvalue())
    return buffer.getvalue()


def _bomb_png(path: Path, side: int) -> None:
    """A PNG whose header declares side x side pixels (over PIL's decompression-bomb limit)."""
    buffer = io.BytesIO()
    Image.new("L", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[16:24] = struct.pack(">II", side, side)  # IHDR width, height
    data[29:33] = struct.pack(">I", zlib.crc32(bytes(data[12:29])))  # IHDR crc
    path.write_bytes(bytes(data))


@pytest.fixture(scope="module")
def odd_tree(tmp_path_factory: pytest.TempPathFactory):
    """An ImageFolder tree with every ImageNet oddity, indexed once."""
    root = tmp_path_factory.mktemp("odd")
    cat, dog = root / "train" / "cat", root / "train" / "dog"
    _image(cat / "rgb.JPEG", (40, 30))
    _image(cat / "gray.JPEG", (20, 10), "L")
    _image(cat / "cmyk.JPEG", (24, 16), "CMYK")
    _image(cat / "png_named.JPEG", (12, 8), fmt="PNG")
    _image(cat / "big.JPEG", (64, 48))
    _image(cat / "rotated.JPEG", (28, 14), orientation=6)
    _bomb_png(cat / "huge.png", 20000)
    whole = _image(cat / "tmp.JPEG", (40, 30))
    (cat / "tmp.JPEG").unlink()
    (cat / "truncated.JPEG").write_bytes(whole[: len(whole) // 2])
    (cat / "header_only.JPEG").write_bytes(whole[:20])
    (cat / "empty.JPEG").write_bytes(b"")
    (cat / "notes.txt").write_text("not an image\n")
    _image(cat / "anim.gif", (8, 8), "P", fmt="GIF")
    _image(dog / "a.JPEG", (16, 16))
    _image(dog / "sub" / "b.JPEG", (16, 32))
    (root / "train" / "empty_class").mkdir()
    _image(root / "val" / "dog" / "v.JPEG", (30, 20))
    (root / "val" / "cat").mkdir(parents=True)
    prepared = prepare_index(root, workers=2, decode_pixel_limit=LIMIT)
    return root, prepared


def test_oddities_are_kept_or_left_out_with_reasons(odd_tree):
    root, prepared = odd_tree
    index = load_index(root)
    assert index.root == root and index.classes == ["cat", "dog", "empty_class"]
    train = index.splits["train"]
    assert train.files == [
        "train/cat/big.JPEG",
        "train/cat/cmyk.JPEG",
        "train/cat/gray.JPEG",
        "train/cat/huge.png",
        "train/cat/png_named.JPEG",
        "train/cat/rgb.JPEG",
        "train/cat/rotated.JPEG",
        "train/dog/a.JPEG",
        "train/dog/sub/b.JPEG",
    ]
    assert train.labels.tolist() == [0, 0, 0, 0, 0, 0, 0, 1, 1]
    assert train.sizes.tolist() == [
        [48, 64],
        [16, 24],
        [10, 20],
        [20000, 20000],
        [8, 12],
        [30, 40],
        [14, 28],  # EXIF orientation 6: as stored (the loader decodes it so)
        [16, 16],
        [32, 16],
    ]
    assert train.offsets is None
    report = json.loads(prepared.report_path.read_text())
    assert prepared.report_path == root / ".blockmix" / "index_report.json"
    reasons = {entry["file"]: entry["reason"] for entry in report["left_out"]}
    assert reasons.pop("train/cat/truncated.JPEG").startswith("cannot decode (OSError: Truncated")
    assert reasons == {
        "train/cat/header_only.JPEG": "cannot decode (truncated or corrupt image header)",
        "train/cat/empty.JPEG": "empty file (0 bytes)",
        "train/cat/notes.txt": "not an image file",
        "train/cat/anim.gif": "GIF image: DALI cannot decode it",
    }
    notes = {entry["file"]: entry["note"] for entry in report["notes"]}
    assert notes == {
        "train/cat/cmyk.JPEG": "CMYK image (DALI decodes it to RGB)",
        "train/cat/gray.JPEG": "L image (DALI decodes it to RGB)",
        "train/cat/png_named.JPEG": "PNG data in a .JPEG file (DALI decodes by content)",
        "train/cat/big.JPEG": f"huge image (64x48 > {LIMIT} pixels): decoded at 1/8 scale",
        "train/cat/rotated.JPEG": "EXIF orientation 6 ignored: decoded as stored, like PIL",
        "train/cat/huge.png": f"L image (DALI decodes it to RGB); huge image (20000x20000 > {LIMIT} pixels): header checked only",
    }
    assert report["splits"]["train"]["modes"] == {"RGB": 6, "L": 2, "CMYK": 1}
    assert report["splits"]["train"]["empty_classes"] == ["empty_class"]
    assert report["splits"]["val"]["empty_classes"] == ["cat"]


def test_huge_image_is_guarded_against_pils_bomb_error(odd_tree):
    root, _ = odd_tree
    with pytest.raises(Image.DecompressionBombError):
        Image.open(root / "train" / "cat" / "huge.png")  # what the checker's own limit replaces


def test_val_labels_use_the_train_classes(odd_tree):
    root, prepared = odd_tree
    val = load_index(root).splits["val"]
    assert val.files == ["val/dog/v.JPEG"] and val.labels.tolist() == [1]
    summary = "\n".join(summary_lines(prepared))
    assert (
        "left out 5 files: 2 cannot decode, 1 GIF image: DALI cannot decode it, 1 empty file, 1 not an image file"
        in summary
    )
    assert (
        "kept 6 files with oddities (modes, formats, huge images); modes: RGB 7, L 2, CMYK 1"
        in summary
    )
    assert "warning: 1 empty train classes: empty_class" in summary
    assert summary.endswith(f"report: {prepared.report_path}")


def test_val_class_absent_from_train_is_an_error_naming_it(tmp_path):
    _image(tmp_path / "train" / "cat" / "a.JPEG", (8, 8))
    _image(tmp_path / "val" / "zebra" / "b.JPEG", (8, 8))
    with pytest.raises(BlockmixError, match="class folder 'zebra' is absent from train/"):
        prepare_index(tmp_path, workers=1)


def test_symlink_loops_are_followed_once_and_reported(tmp_path):
    cat, dog = tmp_path / "train" / "cat", tmp_path / "train" / "dog"
    _image(cat / "a.JPEG", (8, 8))
    _image(cat / "real" / "b.JPEG", (8, 8))
    _image(dog / "c.JPEG", (8, 8))
    (cat / "self").symlink_to(".")
    (cat / "up").symlink_to("../..")
    (cat / "real" / "back").symlink_to("..")
    (cat / "dog").symlink_to(dog)
    (cat / "again").symlink_to("real")
    (cat / "outside").symlink_to(tmp_path.parent)
    prepared = prepare_index(tmp_path, workers=1)
    train = prepared.index.splits["train"]
    assert train.files == ["train/cat/a.JPEG", "train/cat/again/b.JPEG", "train/dog/c.JPEG"]
    assert train.labels.tolist() == [0, 0, 1]
    links = sorted(loop["link"] for loop in prepared.report["symlink_loops"])
    assert links == sorted(
        f"train/cat/{link}" for link in ("self", "up", "again/back", "dog", "real", "outside")
    )
    on_disk = json.loads(prepared.report_path.read_text())
    assert on_disk["symlink_loops"] == prepared.report["symlink_loops"]
    assert any("skipped 6 symlinked folders" in line for line in summary_lines(prepared))


def test_file_lists(tmp_path):
    for i in range(4):
        _image(tmp_path / "images" / f"{i}.jpg", (8 + i, 8))
    (tmp_path / "train.txt").write_text("images/0.jpg 0\nimages/1.jpg 11\n\nimages/missing.jpg 3\n")
    (tmp_path / "val.txt").write_text("images/2.jpg 5\nimages/3.jpg 11\n")
    out = tmp_path / "elsewhere"
    prepared = prepare_index(
        tmp_path, out=out, file_lists={"train": tmp_path / "train.txt", "val": tmp_path / "val.txt"}
    )
    index = load_index(out)
    assert index.root == tmp_path and not (tmp_path / ".blockmix").exists()
    assert index.classes == [f"{i:02d}" for i in range(12)]
    assert index.splits["train"].files == ["images/0.jpg", "images/1.jpg"]
    assert index.splits["train"].labels.tolist() == [0, 11]
    assert index.splits["val"].labels.tolist() == [5, 11]
    assert index.splits["val"].sizes.tolist() == [[8, 10], [8, 11]]
    assert prepared.report["left_out"] == [
        {"split": "train", "file": "images/missing.jpg", "reason": "missing file"}
    ]


@pytest.mark.parametrize(
    ("train", "val", "message"),
    [
        (
            "a.jpg 0\n",
            "b.jpg 1\n",
            r"val.txt:1: label 1 is absent from the train list \(train labels are 0..0\)",
        ),
        ("a.jpg 0\nb.jpg x\n", "", r"train.txt:2: expected 'relative/path label'"),
        ("/abs/a.jpg 0\n", "", r"train.txt:1: '/abs/a.jpg' must be relative"),
        ("a.jpg 0\n", "x/../../b.jpg 0\n", r"val.txt:1: 'x/../../b.jpg' climbs out of the"),
    ],
)
def test_bad_file_lists_name_file_and_line(tmp_path, train, val, message):
    (tmp_path / "train.txt").write_text(train)
    (tmp_path / "val.txt").write_text(val)
    with pytest.raises(BlockmixError, match=message):
        prepare_index(
            tmp_path, file_lists={"train": tmp_path / "train.txt", "val": tmp_path / "val.txt"}
        )


def _index(root: Path, n: int, sharded: bool) -> DatasetIndex:
    rng = np.random.default_rng(0)
    split = Split(
        files=[f"shard-{i // 3}.tar" if sharded else f"train/c{i % 3}/{i}.jpg" for i in range(n)],
        labels=rng.integers(0, 3, n).astype(np.int64),
        sizes=rng.integers(1, 500, (n, 2)).astype(np.int32),
        offsets=rng.integers(0, 1 << 40, (n, 2)).astype(np.int64) if sharded else None,
    )
    empty = Split([], np.zeros(0, np.int64), np.zeros((0, 2), np.int32), None)
    return DatasetIndex(root=root, classes=["a", "b", "c"], splits={"train": split, "val": empty})


def test_index_round_trip_and_relative_root(tmp_path):
    index = _index(tmp_path / "data", 10, sharded=False)
    directory = save_index(index, tmp_path / "data")
    assert sorted(p.name for p in directory.iterdir()) == ["index.json", "index.npz"]
    assert json.loads((directory / "index.json").read_text())["root"] == "."
    shutil.copytree(tmp_path / "data", tmp_path / "moved")
    save_index(DatasetIndex(tmp_path / "moved", index.classes, index.splits), tmp_path / "outside")
    shutil.rmtree(tmp_path / "data")
    loaded = load_index(tmp_path / "moved")
    assert load_index(tmp_path / "outside").root == tmp_path / "moved"  # stored absolute
    shutil.move(tmp_path / "moved", tmp_path / "gone")
    with pytest.raises(BlockmixError, match=r"its data folder .*moved is missing \(moved\?\)"):
        load_index(tmp_path / "outside")
    assert loaded.root == tmp_path / "moved" and loaded.classes == index.classes
    for name, split in index.splits.items():
        got = loaded.splits[name]
        assert got.files == split.files and got.offsets is None
        assert got.labels.dtype == np.int64 and np.array_equal(got.labels, split.labels)
        assert got.sizes.dtype == np.int32 and np.array_equal(got.sizes, split.sizes)


def test_sharded_index_needs_its_manifest(tmp_path):
    save_index(_index(tmp_path, 7, sharded=True), tmp_path)
    with pytest.raises(BlockmixError, match=r"manifest\.json: unreadable manifest"):
        load_index(tmp_path)  # tar offsets are never trusted without the shards' manifest


def test_save_is_deterministic_and_arrays_must_match_header(tmp_path):
    index = _index(tmp_path, 5, sharded=False)
    first = save_index(index, tmp_path / "a")
    second = save_index(index, tmp_path / "b")
    assert (first / "index.npz").read_bytes() == (second / "index.npz").read_bytes()
    other = DatasetIndex(tmp_path, index.classes, {"train": index.splits["val"]})
    shutil.copy(save_index(other, tmp_path / "c") / "index.npz", first / "index.npz")
    with pytest.raises(BlockmixError, match=r"index\.npz does not belong to .*index\.json"):
        load_index(tmp_path / "a")


def test_save_rejects_inconsistent_arrays(tmp_path):
    bad = Split(["x.jpg"], np.array([3], np.int64), np.zeros((1, 2), np.int32), None)
    with pytest.raises(BlockmixError, match=r"split 'train': labels must lie in \[0, 3\)"):
        save_index(DatasetIndex(tmp_path, ["a", "b", "c"], {"train": bad}), tmp_path)


def test_load_index_errors_say_what_to_do(tmp_path):
    with pytest.raises(BlockmixError, match="does not exist"):
        load_index(tmp_path / "missing")
    (tmp_path / "train" / "cat").mkdir(parents=True)
    with pytest.raises(
        BlockmixError, match=r"ImageFolder tree without an index; run `blockmix prepare index .*`"
    ):
        load_index(tmp_path)
    with pytest.raises(BlockmixError, match="holds no blockmix index"):
        load_index(tmp_path / "train")


def test_cli_errors_are_one_line_with_exit_code_2(tmp_path, capsys):
    assert main(["prepare", "index", str(tmp_path / "missing")]) == 2
    assert main(["prepare", "index", str(tmp_path), "--file-list", "train"]) == 2
    assert main(["prepare", "shards", str(tmp_path), str(tmp_path / "out")]) == 2
    (tmp_path / "file").write_text("in the way")
    assert main(["prepare", "index", str(tmp_path), "--out", str(tmp_path / "file")]) == 2
    lines = capsys.readouterr().err.splitlines()
    assert lines[3] == (
        f"blockmix prepare: error: {tmp_path / 'file' / '.blockmix'}: cannot write the index here; "
        "pass --out DIR for a read-only dataset (Not a directory)"
    )
    assert lines[:3] == [
        f"blockmix prepare: error: {tmp_path / 'missing'}: not a folder",
        "blockmix prepare: error: --file-list 'train': expected SPLIT=PATH, e.g. train=train.txt",
        f"blockmix prepare: error: {tmp_path} holds no blockmix index (.blockmix/index.json); prepare it "
        "with `blockmix prepare index`, `blockmix prepare shards` or `blockmix prepare demo`",
    ]


def test_cli_prepare_index_points_to_the_report(odd_tree, tmp_path, capsys):
    root, _ = odd_tree
    assert main(["prepare", "index", str(root), "--out", str(tmp_path), "--workers", "1"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "indexed 9 train, 1 val samples of 3 classes"
    assert out[-1] == f"report: {tmp_path / '.blockmix' / 'index_report.json'}"
    assert load_index(tmp_path).root == root
