"""`make bench-data`: the DALI loader against a PIL DataLoader, the decode ceiling, and index scale.

1. An ImageNet-like set (500x375 / 375x500 JPEGs cut from scikit-learn's real photos), standard
   train augmentation to 224 px (random-resized-crop, flip, normalise, NCHW float):
   DaliLoader vs a plain torch DataLoader with PIL doing the same, with the same number of worker
   threads/processes; plus the single-pass decode ceiling (decode-only, all threads) measured with
   both DALI and PIL, the faster of which is the ceiling. The methods run in interleaved rounds;
   each is reported by wall clock and by CPU time (images per CPU second of all its
   threads and worker processes, times the thread count), which stays meaningful when other jobs
   share the cores; each as the median over rounds with its interquartile range, and each ratio
   as the median of the per-round ratios ("too noisy" where the spread exceeds the effect).
   In the same rounds, the loader's CPU cost by stage: its own pipeline (`build_pipeline`, fed
   the same bytes and crop windows) run through ROI decode, the resize, then all of it, and the
   loader itself; each stage's share is the CPU time per image it adds, of the loader's. When a
   target is missed, the largest share is printed as the limiting stage.
2. Scale: a 1,281,167-entry index saved with the prepare helpers; time and peak memory (a fresh
   process) to load it and produce epoch 0's sample assignment for rank 0 of 512.
Ratios are printed last.
"""

from __future__ import annotations

import argparse
import atexit
import itertools
import math
import os
import random
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
from PIL import Image
from stats import Spread, ratios, verdict

from data_pipeline.config import IMAGENET_MEAN, IMAGENET_STD, DataConfig
from data_pipeline.index_format import DatasetIndex, Split, load_index, save_index

# torch, scikit-learn and DALI are imported where used: the scale child process must stay lean.

IMAGENET_TRAIN = 1_281_167
LOADER = "DALI loader (ROI decode, RRC 224, flip, normalise)"
PIL_LOADER = "PIL + torch DataLoader, same recipe"
DECODERS = ("decode only, DALI", "decode only, PIL")
#: the loader's CPU cost split into stages, each adding to the one before: its pipeline run
#: through the stage (`build_pipeline(until=...)`), and last what DaliLoader adds above it
STAGES: dict[str, str] = {
    "pipeline: ROI decode": "decode",
    "pipeline: random-resized-crop resize to 224": "resize",
    "pipeline: flip, normalise, CHW float (all of it)": "normalize",
}
HANDOFF = "DaliLoader handoff (the loader above its pipeline)"


def make_images(folder: Path, count: int) -> DatasetIndex:
    """``count`` JPEGs of 500x375 (3 in 4) or 375x500, random crops of the real sample photos."""
    from sklearn.datasets import load_sample_images

    rng = np.random.default_rng(0)
    photos = [Image.fromarray(p) for p in load_sample_images().images]
    files, sizes = [], []
    for i in range(count):
        photo = photos[i % len(photos)]
        width, height = (500, 375) if i % 4 else (375, 500)
        crop_h = int(rng.integers(200, photo.height + 1))
        crop_w = min(photo.width, int(crop_h * width / height * rng.uniform(0.8, 1.2)))
        x, y = (
            int(rng.integers(0, photo.width - crop_w + 1)),
            int(rng.integers(0, photo.height - crop_h + 1)),
        )
        image = photo.resize((width, height), Image.BILINEAR, box=(x, y, x + crop_w, y + crop_h))
        image.save(folder / f"{i:05d}.JPEG", quality=90)
        files.append(f"{i:05d}.JPEG")
        sizes.append((height, width))
    split = Split(files, np.arange(count) % 10, np.array(sizes, dtype=np.int32), None)
    return DatasetIndex(folder, [f"class{c}" for c in range(10)], {"train": split})


class PilTrainSet:
    """The same recipe with PIL and numpy: RandomResizedCrop(224) + flip + normalise, CHW float."""

    def __init__(self, index: DatasetIndex, size: int) -> None:
        self.paths = [index.root / f for f in index.splits["train"].files]
        self.labels = index.splits["train"].labels
        self.size = size
        self.mean = np.array(IMAGENET_MEAN, dtype=np.float32) * 255
        self.std = np.array(IMAGENET_STD, dtype=np.float32) * 255

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[np.ndarray, int]:
        with Image.open(self.paths[i]) as image:
            image = image.convert("RGB")
            box = _random_resized_crop(image.width, image.height)
            image = image.resize((self.size, self.size), Image.BILINEAR, box=box)
        if random.random() < 0.5:
            image = image.transpose(Image.FLIP_LEFT_RIGHT)
        pixels = (np.asarray(image, dtype=np.float32) - self.mean) / self.std
        return np.ascontiguousarray(pixels.transpose(2, 0, 1)), int(self.labels[i])


def _random_resized_crop(width: int, height: int) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop window (scale 0.08-1, ratio 3/4-4/3) as a PIL box."""
    area = width * height
    for _ in range(10):
        target = area * random.uniform(0.08, 1.0)
        aspect = math.exp(random.uniform(math.log(3 / 4), math.log(4 / 3)))
        w, h = round(math.sqrt(target * aspect)), round(math.sqrt(target / aspect))
        if 0 < w <= width and 0 < h <= height:
            x, y = random.randint(0, width - w), random.randint(0, height - h)
            return x, y, x + w, y + h
    return 0, 0, width, height


class Measure(NamedTuple):
    """Images processed, wall seconds, and CPU seconds of this process and its workers."""

    images: int
    wall: float
    cpu: float


def _cpu_seconds() -> float:
    """CPU time of this process (all threads) plus its live worker processes."""
    import multiprocessing

    tick = os.sysconf("SC_CLK_TCK")
    total = time.process_time()
    for child in multiprocessing.active_children():
        try:
            fields = Path(f"/proc/{child.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except FileNotFoundError:
            continue
        total += (int(fields[11]) + int(fields[12])) / tick  # utime + stime
    return total


def _timed(batches: Iterable[int]) -> Measure:
    """Consume ``batches`` (an iterable of batch sizes), timing wall clock and CPU."""
    wall, cpu = time.perf_counter(), _cpu_seconds()
    count = sum(batches)
    return Measure(count, time.perf_counter() - wall, _cpu_seconds() - cpu)


def dali_runner(index: DatasetIndex, threads: int, batch: int) -> Callable[[], Measure]:
    """One timed epoch of DaliLoader per call (after an untimed warm-up epoch)."""
    from data_pipeline.loader import DaliLoader

    config = DataConfig(root=str(index.root), batch_size=batch, num_threads=threads, device="cpu")
    loader = DaliLoader(config, train=True, index=index)
    for _ in loader:
        pass
    return lambda: _timed(len(b.labels) for b in loader)


def pil_runner(index: DatasetIndex, workers: int, batch: int) -> Callable[[], Measure]:
    """One timed epoch of a torch DataLoader with PIL worker processes per call."""
    import torch

    loader = torch.utils.data.DataLoader(
        PilTrainSet(index, 224),
        batch_size=batch,
        shuffle=True,
        num_workers=workers,
        drop_last=True,
        persistent_workers=True,
    )
    for _ in loader:
        pass
    return lambda: _timed(len(images) for images, _ in loader)


def _encoded_batches(index: DatasetIndex, batch: int, crops: bool) -> Iterator[Any]:
    """Every step's encoded images, read from disk each time, in file order, round and round;
    with ``crops``, also the loader's epoch-0 crop windows and flips for them (`crop_windows`)."""
    from data_pipeline.order import crop_windows

    split = index.splits["train"]
    files = [index.root / f for f in split.files]
    steps = len(files) // batch
    config = DataConfig()
    for i in itertools.count():
        rows = np.arange((i % steps) * batch, (i % steps + 1) * batch)
        encoded = [np.fromfile(files[r], dtype=np.uint8) for r in rows]
        if not crops:
            yield encoded
            continue
        anchors, shapes, flips = crop_windows(
            split.sizes[rows], rows, seed=0, epoch=0, scale=config.scale, ratio=config.ratio
        )
        yield encoded, anchors, shapes, flips.astype(np.int32)


def _pipeline_runner(pipe: Any, steps: int) -> Callable[[], Measure]:
    """One epoch (``steps`` runs) of a built DALI pipeline per call, after an untimed one."""
    for _ in range(steps):
        pipe.run()
    return lambda: _timed(len(pipe.run()[0]) for _ in range(steps))


def dali_decode_runner(index: DatasetIndex, threads: int, batch: int) -> Callable[[], Measure]:
    """One epoch of decode-only DALI (full single-pass decode, bytes fed the same way) per call."""
    from nvidia.dali import fn, types
    from nvidia.dali.pipeline import Pipeline

    source = _encoded_batches(index, batch, crops=False)
    pipe = Pipeline(batch_size=batch, num_threads=threads, device_id=None, prefetch_queue_depth=2)
    with pipe:
        jpegs = fn.external_source(source=source, batch=True, dtype=types.UINT8)
        pipe.set_outputs(fn.decoders.image(jpegs, device="cpu", output_type=types.RGB))
    return _pipeline_runner(pipe, len(index.splits["train"].files) // batch)


def stage_pipeline(index: DatasetIndex, threads: int, batch: int, until: str) -> Any:
    """The loader's own train pipeline (`build_pipeline` with the loader's settings), built to end
    after stage ``until``."""
    from data_pipeline.pipelines import build_pipeline

    config = DataConfig(root=str(index.root), batch_size=batch, num_threads=threads, device="cpu")
    source = _encoded_batches(index, batch, crops=True)
    pipe = build_pipeline(config, source, train=True, batch_size=batch, device_id=None, until=until)
    with warnings.catch_warnings():  # before the mirror step the flips go unused, as meant
        warnings.filterwarnings("ignore", "The external source node", Warning)
        pipe.build()
    return pipe


def _pil_decode(path: Path) -> int:
    with Image.open(path) as image:
        return image.convert("RGB").width


def pil_decode_runner(index: DatasetIndex, workers: int) -> Callable[[], Measure]:
    """One pass of decode-only PIL over the set in ``workers`` processes per call."""
    import multiprocessing

    files = [index.root / f for f in index.splits["train"].files]
    pool = multiprocessing.get_context("fork").Pool(workers)
    atexit.register(pool.terminate)
    pool.map(_pil_decode, files)
    return lambda: _timed(len(pool.map(_pil_decode, files, chunksize=8)) for _ in range(1))


def write_scale_index(folder: Path) -> None:
    """An ImageNet-train-sized index (synthetic paths, 1000 classes) saved like `prepare` does."""
    labels = np.arange(IMAGENET_TRAIN, dtype=np.int64) % 1000
    classes = [f"n{c:08d}" for c in range(1000)]
    files = [f"train/{classes[c]}/{classes[c]}_{i}.JPEG" for i, c in enumerate(labels.tolist())]
    sizes = np.tile(np.array([[375, 500]], dtype=np.int32), (IMAGENET_TRAIN, 1))
    split = Split(files, labels, sizes, None)
    save_index(DatasetIndex(folder, classes, {"train": split}), folder)


def scale_child(folder: str) -> None:
    """In a fresh process: load the index and assign epoch 0 to rank 0 of 512; print s and MB."""
    from data_pipeline.order import TrainOrder, epoch_permutation

    baseline_mb = _peak_rss_mb()
    start = time.perf_counter()
    split = load_index(folder).splits["train"]
    order = TrainOrder(len(split.files), batch_size=64, rank=0, world_size=512)
    mine = order.rank_epoch_indices(epoch_permutation(len(split.files), seed=0, epoch=0))
    first_files = [split.files[i] for i in mine[:4]]
    elapsed = time.perf_counter() - start
    peak_mb = _peak_rss_mb()
    print(f"{elapsed} {peak_mb} {baseline_mb} {len(mine)} {first_files[0]}")


def _peak_rss_mb() -> float:
    """This process's peak resident memory (VmHWM; unlike ru_maxrss, not inherited over exec)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=512)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--scale-child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.scale_child:
        scale_child(args.scale_child)
        return
    with tempfile.TemporaryDirectory() as tmp:
        index = make_images(Path(tmp), args.images)
        print(f"ImageNet-like set: {args.images} JPEGs (500x375 / 375x500) in {tmp}")
        print(
            f"threads/workers: {args.threads}, batch {args.batch}, "
            f"{args.rounds} interleaved rounds of one epoch each"
        )
        runners = {
            LOADER: dali_runner(index, args.threads, args.batch),
            PIL_LOADER: pil_runner(index, args.threads, args.batch),
            DECODERS[0]: dali_decode_runner(index, args.threads, args.batch),
            DECODERS[1]: pil_decode_runner(index, args.threads),
        }
        for stage, until in STAGES.items():
            pipe = stage_pipeline(index, args.threads, args.batch, until)
            runners[stage] = _pipeline_runner(pipe, args.images // args.batch)
        measures: dict[str, list[Measure]] = {name: [] for name in runners}
        for _ in range(args.rounds):
            for name, run in runners.items():
                measures[name].append(run())
    # Per round: images/s of wall clock, and images per CPU second of all threads and workers
    # times the thread count (the rate on otherwise idle cores). Ratios pair each round's sides.
    wall = {name: [m.images / m.wall for m in ms] for name, ms in measures.items()}
    cpu = {name: [args.threads * m.images / m.cpu for m in ms] for name, ms in measures.items()}
    print(f"  {'img/s, median (IQR)':52s} {'wall':>26s} {'CPU':>26s}")
    for name in measures:
        print(
            f"  {name:52s} {Spread.of(wall[name]).rate(''):>26s} {Spread.of(cpu[name]).rate(''):>26s}"
        )
    print(
        "Loader stages, each adding to the one above (share: CPU s per image it adds / loader's):"
    )
    print(f"  {'stage':52s} {'img/s through it, median (IQR)':>30s} {'share, median (IQR)':>24s}")
    shares = stage_shares(cpu, [*STAGES, LOADER])
    for stage, name in zip([*STAGES, HANDOFF], [*STAGES, LOADER], strict=True):
        print(f"  {stage:52s} {Spread.of(cpu[name]).rate(''):>30s} {_percent(shares[name]):>24s}")
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        write_scale_index(Path(tmp))
        print(
            f"Scale: wrote a {IMAGENET_TRAIN:,}-entry index in {time.perf_counter() - start:.1f} s"
        )
        child = subprocess.run(
            [sys.executable, __file__, "--scale-child", tmp],
            check=True,
            capture_output=True,
            text=True,
        )
        seconds, peak_mb, baseline_mb, assigned, first = child.stdout.split()
        print(f"  rank 0 of 512 gets {assigned} samples in epoch 0 (first: {first})")
    print("Results (ratios last):")
    print(
        f"  scale: load index + rank 0/512 assignment {float(seconds):.2f} s (target <= 5 s), "
        f"peak memory {float(peak_mb):.0f} MB (target <= 500 MB; whole process, "
        f"{float(baseline_mb):.0f} MB before loading)"
    )
    missed = False
    for basis, rate in (("wall", wall), ("CPU", cpu)):
        ceiling = [max(values) for values in zip(*(rate[name] for name in DECODERS), strict=True)]
        share = ratios(rate[LOADER], ceiling)
        missed |= share.low < 0.5
        print(
            f"  decode ceiling share ({basis}): DALI loader / decode-only "
            f"{verdict(share, 0.5, at_most=False)}"
        )
    for basis, rate in (("wall", wall), ("CPU", cpu)):
        speedup = ratios(rate[LOADER], rate[PIL_LOADER])
        missed |= speedup.low < 2.0
        print(
            f"  speed-up ({basis}): DALI loader / PIL DataLoader "
            f"{verdict(speedup, 2.0, at_most=False)}"
        )
    if missed:
        stage, name = max(
            zip([*STAGES, HANDOFF], [*STAGES, LOADER], strict=True),
            key=lambda pair: shares[pair[1]].median,
        )
        print(f"  limiting stage: {stage} ({_percent(shares[name])} of loader CPU time)")


def stage_shares(cpu: dict[str, list[float]], names: list[str]) -> dict[str, Spread]:
    """Per round, the CPU seconds per image each of the cumulative ``names`` adds to the one
    before it, as a share of the last one's (the loader's): median and IQR over rounds."""
    costs = [[1 / rate for rate in cpu[name]] for name in names]
    shares, before = {}, [0.0] * len(costs[0])
    for name, cost in zip(names, costs, strict=True):
        shares[name] = Spread.of(
            [(c - b) / t for c, b, t in zip(cost, before, costs[-1], strict=True)]
        )
        before = cost
    return shares


def _percent(share: Spread) -> str:
    """A share with its spread, e.g. ``52% (IQR 48-55%)``."""
    return f"{share.median:.0%} (IQR {100 * share.low:.0f}-{share.high:.0%})"


if __name__ == "__main__":
    main()
