"""Checking image files before a run meets them: does the file decode, and can DALI decode it?

Files are checked in worker processes (forked from a clean fork server, so that PIL's
process-wide decompression-bomb limit can be replaced by blockmix's own ``decode_pixel_limit``
there without touching the caller, and threads of the caller never meet a fork):
images up to the limit are fully decoded; larger JPEGs are decoded at 1/8 scale (every byte is
still entropy-decoded, at 1/64 of the memory); larger images of other formats have their header
checked only. Such huge images are kept and noted in the report.
"""

from __future__ import annotations

import multiprocessing
import os
import warnings
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from functools import partial

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

DECODE_PIXEL_LIMIT = 1 << 26  # 67,108,864 pixels (8192 x 8192): about 200 MB decoded as RGB
DALI_FORMATS = frozenset({"JPEG", "MPO", "PNG", "BMP", "TIFF", "JPEG2000", "WEBP", "PPM"})
_JPEG_FORMATS = ("JPEG", "MPO")
_JPEG_SUFFIXES = (".jpg", ".jpeg")
_PROGRESS_MIN_FILES = 2000
_IMAGE_SIGNATURES = (b"\xff\xd8\xff", b"\x89PNG", b"GIF8", b"BM", b"II*\x00", b"MM\x00*", b"RIFF")
_EXIF_ORIENTATION = 0x0112


@dataclass(frozen=True)
class ImageCheck:
    """What checking one file found: (height, width) as stored (EXIF orientation ignored, as the
    loader decodes it); ``reason`` is why it is left out; ``note`` is an oddity of a kept file
    (mode other than RGB, a format its name hides, an EXIF orientation, a huge image)."""

    height: int = 0
    width: int = 0
    mode: str = ""
    format: str = ""
    reason: str = ""
    note: str = ""

    @property
    def ok(self) -> bool:
        return not self.reason


def default_workers() -> int:
    """The CPU cores this process may use."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


def check_images(
    paths: Sequence[str],
    workers: int | None = None,
    decode_pixel_limit: int = DECODE_PIXEL_LIMIT,
    description: str = "checking images",
) -> list[ImageCheck]:
    """Check every file in ``paths`` in a pool of ``workers`` processes, in order.

    A progress bar (on stderr) is shown for big trees.
    """
    workers = max(1, min(workers or default_workers(), len(paths) or 1))
    chunksize = max(1, min(256, len(paths) // (workers * 16)))
    check = partial(check_image, decode_pixel_limit=decode_pixel_limit)
    with ProcessPoolExecutor(
        max_workers=workers,
        mp_context=multiprocessing.get_context("forkserver"),
        initializer=_init_worker,
    ) as pool:
        results = pool.map(check, paths, chunksize=chunksize)
        bar = tqdm(
            results,
            total=len(paths),
            desc=description,
            unit="file",
            disable=len(paths) < _PROGRESS_MIN_FILES,
        )
        return list(bar)


def check_image(path: str, decode_pixel_limit: int = DECODE_PIXEL_LIMIT) -> ImageCheck:
    """Check one file (call it in a process set up by ``_init_worker``)."""
    try:
        if os.path.getsize(path) == 0:
            return ImageCheck(reason="empty file (0 bytes)")
        with Image.open(path) as image:
            width, height = image.size
            jpeg = image.format in _JPEG_FORMATS  # (other formats' getexif() decodes the image)
            orientation = image.getexif().get(_EXIF_ORIENTATION, 1) if jpeg else 1
            found = ImageCheck(height, width, mode=image.mode, format=image.format or "")
            if found.format not in DALI_FORMATS:
                return _with(
                    found, reason=f"{found.format or 'unknown'} image: DALI cannot decode it"
                )
            notes = _oddities(path, found)
            if orientation != 1:
                notes.append(f"EXIF orientation {orientation} ignored: decoded as stored, like PIL")
            if width * height <= decode_pixel_limit:
                image.load()
            elif found.format in _JPEG_FORMATS:
                image.draft(None, (width // 8, height // 8))
                image.load()
                notes.append(
                    f"huge image ({width}x{height} > {decode_pixel_limit} pixels): decoded at 1/8 scale"
                )
            else:
                notes.append(
                    f"huge image ({width}x{height} > {decode_pixel_limit} pixels): header checked only"
                )
            return _with(found, note="; ".join(notes))
    except FileNotFoundError:
        return ImageCheck(reason="missing file")
    except UnidentifiedImageError:
        with open(path, "rb") as stream:
            start = stream.read(16)
        if start.startswith(_IMAGE_SIGNATURES):
            return ImageCheck(reason="cannot decode (truncated or corrupt image header)")
        return ImageCheck(reason="not an image file")
    except Exception as error:  # a malformed file may make any PIL plugin raise; never crash a scan
        return ImageCheck(reason=f"cannot decode ({type(error).__name__}: {error})")


def _oddities(path: str, found: ImageCheck) -> list[str]:
    notes = []
    if found.mode != "RGB":
        notes.append(f"{found.mode} image (DALI decodes it to RGB)")
    suffix = os.path.splitext(path)[1]
    if suffix.lower() in _JPEG_SUFFIXES and found.format not in _JPEG_FORMATS:
        notes.append(f"{found.format} data in a {suffix} file (DALI decodes by content)")
    return notes


def _with(found: ImageCheck, reason: str = "", note: str = "") -> ImageCheck:
    return ImageCheck(found.height, found.width, found.mode, found.format, reason, note)


def _init_worker() -> None:
    """Replace PIL's decompression-bomb limit (process-wide) by ``decode_pixel_limit``."""
    Image.MAX_IMAGE_PIXELS = None
    warnings.simplefilter("ignore", Image.DecompressionBombWarning)
