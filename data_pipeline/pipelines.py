"""The DALI graphs: decode, crop, resize, flip and normalise the encoded images blockmix feeds in.

The graphs hold no randomness: the training crop window and flip arrive per sample from
`data_pipeline.order` through ``external_source``, so the decoded pixels depend only on the sample
and its (seed, epoch) — not on DALI's RNG, thread count or batch composition.
"""

from __future__ import annotations

from collections.abc import Iterable

from nvidia.dali import fn, types
from nvidia.dali.pipeline import Pipeline

from data_pipeline.config import DataConfig

#: the train graph's stages in order; `build_pipeline(until=...)` ends after one of them
TRAIN_STAGES = ("decode", "resize", "normalize")


def build_pipeline(
    config: DataConfig,
    source: Iterable,
    *,
    train: bool,
    batch_size: int,
    device_id: int | None,
    until: str = "normalize",
) -> Pipeline:
    """A pipeline with one output: a batch of images, NCHW (or NHWC when ``channels_last``).

    ``source`` yields, per step, the batch's encoded images (a list of uint8 arrays) and, for
    training, also int32 crop anchors (x, y), int32 crop shapes (w, h) and int32 flips.
    ``device_id`` None decodes on the CPU; an int decodes with DALI "mixed" on that GPU.
    Images are decoded as stored (EXIF orientation ignored, like PIL/torchvision), which is what
    the index's sizes and so the crop windows refer to, with the CPU decoder's chroma upsampling
    on both backends so that CPU and GPU runs see nearly the same pixels. ``until`` (train only)
    ends the graph after one of `TRAIN_STAGES`, to measure what each stage costs (`make
    bench-data`); the loader always builds all of it.
    """
    if until not in TRAIN_STAGES or (until != "normalize" and not train):
        raise ValueError(f"until={until!r}: one of {TRAIN_STAGES}, and only for the train graph")
    pipe = Pipeline(
        batch_size=batch_size,
        num_threads=config.num_threads,
        device_id=device_id,
        seed=config.seed,
        prefetch_queue_depth=config.prefetch,
    )
    decoder = "cpu" if device_id is None else "mixed"
    size = [config.image_size, config.image_size]
    with pipe:
        if train:
            jpegs, anchors, shapes, flips = fn.external_source(
                source=source,
                num_outputs=4,
                batch=True,
                dtype=[types.UINT8, types.INT32, types.INT32, types.INT32],
            )
            images = fn.decoders.image_slice(
                jpegs,
                anchors,
                shapes,
                device=decoder,
                output_type=types.RGB,
                adjust_orientation=False,
                jpeg_fancy_upsampling=True,
            )
            if until == "decode":
                pipe.set_outputs(images)
                return pipe
            images = fn.resize(images, size=size, interp_type=types.INTERP_LINEAR, antialias=True)
            if until == "resize":
                pipe.set_outputs(images)
                return pipe
        else:
            jpegs = fn.external_source(source=source, batch=True, dtype=types.UINT8)
            images = fn.decoders.image(
                jpegs,
                device=decoder,
                output_type=types.RGB,
                adjust_orientation=False,
                jpeg_fancy_upsampling=True,
            )
            images = fn.resize(
                images,
                resize_shorter=config.val_resize,
                interp_type=types.INTERP_LINEAR,
                antialias=True,
            )
            flips = 0
        uint8 = config.output == "uint8"
        images = fn.crop_mirror_normalize(
            images,
            crop=size,
            mirror=flips,
            dtype=types.UINT8 if uint8 else types.FLOAT,
            output_layout="HWC" if config.channels_last else "CHW",
            mean=[0.0] if uint8 else [255 * m for m in config.mean],
            std=[1.0] if uint8 else [255 * s for s in config.std],
        )
        pipe.set_outputs(images)
    return pipe
