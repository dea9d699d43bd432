"""`blockmix prepare demo`: the built-in dataset, made offline from scikit-learn's real data.

The 1,797 handwritten digits of `sklearn.datasets.load_digits` (8x8, 0..16) are upscaled to
32x32 RGB JPEGs in four domains, with one stratified train/val split (20% val per class) shared by
all domains, so the same digit has the same file name everywhere:

- ``digits``: dark ink on white paper (the default domain);
- ``inverted``: white ink on black;
- ``noisy``: ``digits`` plus Gaussian pixel noise;
- ``photo``: ink that inverts the colours of a patch cut from the real photos scikit-learn ships
  (`load_sample_images`: china.jpg, flower.jpg), in the style of MNIST-M.

Layout: ``OUT/<domain>/{train,val}/<digit>/<sample>.jpg``, each domain indexed
(``OUT/<domain>/.blockmix/``) and written whole into a staging folder that is then renamed; ``OUT/.blockmix/`` is the index of the default domain, so
``load_index(OUT)`` gives ``digits`` and ``load_index(OUT / "photo")`` another domain;
``OUT/domains.json`` lists the domains. Fixed seeds and JPEG settings make every file
byte-for-byte the same on every run (with the same Pillow and scikit-learn).
"""

from __future__ import annotations

import io
import itertools
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from data_pipeline.atomic import write_json_atomic
from data_pipeline.errors import BlockmixError
from data_pipeline.index_format import DatasetIndex, load_index, save_index
from data_pipeline.prepare.scan import prepare_index

DOMAINS = ("digits", "inverted", "noisy", "photo")
DEFAULT_DOMAIN = "digits"
DOMAINS_FILE = "domains.json"
IMAGE_SIZE = 32
VAL_FRACTION = 0.2
JPEG_QUALITY = 90
NOISE_STD = 0.15
SEED = 0


@dataclass(frozen=True)
class PreparedDemo:
    """The index of every domain of a demo folder."""

    root: Path
    indexes: dict[str, DatasetIndex]


def prepare_demo(out: str | Path, workers: int | None = None) -> PreparedDemo:
    """Write the demo dataset into ``out`` (seconds; identical bytes on every run)."""
    from sklearn.datasets import load_digits

    out = Path(out).expanduser().absolute()
    digits = load_digits()
    ink = upscale_ink(digits.images / 16.0)
    labels = digits.target.astype(np.int64)
    is_val = stratified_val(labels)
    indexes = {}
    for domain in DOMAINS:

        def fill(staging: Path, domain: str = domain) -> None:
            for split, label in itertools.product(("train", "val"), np.unique(labels).tolist()):
                (staging / split / str(label)).mkdir(parents=True)
            for i, pixels in enumerate(_render(domain, ink)):
                split = "val" if is_val[i] else "train"
                (staging / split / str(labels[i]) / f"{i:04d}.jpg").write_bytes(jpeg(pixels))

        indexes[domain] = write_domain(out, domain, fill, workers)
    write_domains_file(
        out,
        indexes,
        DEFAULT_DOMAIN,
        image_size=IMAGE_SIZE,
        source="sklearn.datasets.load_digits (photo backgrounds: load_sample_images)",
        samples={name: len(s) for name, s in indexes[DEFAULT_DOMAIN].splits.items()},
    )
    return PreparedDemo(out, indexes)


def demo_domains(root: str | Path) -> list[str]:
    """The domain names of a demo folder written by ``prepare_demo``."""
    path = Path(root).expanduser() / DOMAINS_FILE
    try:
        return list(json.loads(path.read_text())["domains"])
    except (OSError, ValueError, KeyError) as error:
        raise BlockmixError(
            f"{path}: not a demo folder ({error}); run `blockmix prepare demo {root}`"
        ) from error


def load_domain(root: str | Path, domain: str) -> DatasetIndex:
    """The index of one domain of a demo folder."""
    if domain not in demo_domains(root):
        raise BlockmixError(
            f"{root}: no demo domain {domain!r}; choose one of {', '.join(demo_domains(root))}"
        )
    return load_index(Path(root) / domain)


def write_domain(
    out: Path, domain: str, fill: Callable[[Path], None], workers: int | None = None
) -> DatasetIndex:
    """Write the domain ``out/domain`` whole: ``fill(staging)`` writes its ImageFolder into a
    staging folder, which is indexed and then renamed into place; returns the domain's index."""
    staging = out / f".{domain}.partial"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    fill(staging)
    prepare_index(staging, workers=workers)
    shutil.rmtree(out / domain, ignore_errors=True)
    staging.rename(out / domain)
    return load_index(out / domain)


def write_domains_file(
    out: Path, indexes: dict[str, DatasetIndex], default: str, **info: object
) -> None:
    """Index the ``default`` domain at ``out`` too, then write ``out/domains.json``: the default,
    the domains in order and ``info``."""
    save_index(indexes[default], out)
    write_json_atomic(out / DOMAINS_FILE, {"default": default, "domains": list(indexes), **info})


def upscale_ink(images: np.ndarray) -> np.ndarray:
    """(N, 8, 8) in [0, 1] -> (N, IMAGE_SIZE, IMAGE_SIZE) float32 ink, bicubic, in [0, 1]."""
    size = (IMAGE_SIZE, IMAGE_SIZE)
    big = [
        np.asarray(Image.fromarray(image.astype(np.float32), "F").resize(size, Image.BICUBIC))
        for image in images
    ]
    return np.clip(np.stack(big), 0.0, 1.0)


def stratified_val(labels: np.ndarray) -> np.ndarray:
    """A boolean mask choosing round(VAL_FRACTION * n) samples of every class for val."""
    rng = np.random.default_rng(SEED)
    is_val = np.zeros(len(labels), bool)
    for label in np.unique(labels):
        members = rng.permutation(np.flatnonzero(labels == label))
        is_val[members[: round(VAL_FRACTION * len(members))]] = True
    return is_val


def _render(domain: str, ink: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) uint8 images of one domain."""
    rng = np.random.default_rng([SEED, DOMAINS.index(domain)])
    paper = np.repeat((1.0 - ink)[..., None], 3, axis=-1)
    if domain == "digits":
        rgb = paper
    elif domain == "inverted":
        rgb = 1.0 - paper
    elif domain == "noisy":
        rgb = paper + rng.normal(0.0, NOISE_STD, paper.shape)
    else:
        background = _photo_patches(rng, len(ink))
        rgb = background * (1.0 - ink[..., None]) + (1.0 - background) * ink[..., None]
    return np.round(np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8)


def _photo_patches(rng: np.random.Generator, n: int) -> np.ndarray:
    """(n, H, W, 3) patches in [0, 1] cut at random places from scikit-learn's sample photos."""
    from sklearn.datasets import load_sample_images

    photos = load_sample_images().images
    patches = np.empty((n, IMAGE_SIZE, IMAGE_SIZE, 3), np.float64)
    for i in range(n):
        photo = photos[i % len(photos)]
        top = rng.integers(0, photo.shape[0] - IMAGE_SIZE + 1)
        left = rng.integers(0, photo.shape[1] - IMAGE_SIZE + 1)
        patches[i] = photo[top : top + IMAGE_SIZE, left : left + IMAGE_SIZE] / 255.0
    return patches


def jpeg(pixels: np.ndarray) -> bytes:
    """(H, W, 3) uint8 pixels as the bytes of a JPEG file (fixed settings: same bytes every time)."""
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGB").save(buffer, "JPEG", quality=JPEG_QUALITY, optimize=False)
    return buffer.getvalue()
