"""The DALI graphs on real JPEGs: region-of-interest crop, flip, val resize + centre crop, layouts."""

import io

import numpy as np
import pytest
from PIL import Image

from data_pipeline.config import DataConfig
from data_pipeline.pipelines import build_pipeline

RED, GREEN, BLUE = (255, 0, 0), (0, 255, 0), (0, 0, 255)


def _jpeg(colours, height, width):
    """A JPEG of vertical bands of ``colours`` (left to right), as a uint8 array of its bytes."""
    pixels = np.zeros((height, width, 3), dtype=np.uint8)
    for k, colour in enumerate(colours):
        pixels[:, k * width // len(colours) : (k + 1) * width // len(colours)] = colour
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG", quality=95)
    return np.frombuffer(buffer.getvalue(), dtype=np.uint8)


def _run(config, batch, *, train):
    pipe = build_pipeline(
        config, iter([batch] * config.prefetch), train=train, batch_size=2, device_id=None
    )
    (images,) = pipe.run()
    return np.array(images.as_tensor())


def _mean_colour(chw):
    return chw.reshape(3, -1).mean(axis=1)


CONFIG = DataConfig(root="unused", image_size=32, val_resize=40, num_threads=1, output="uint8")


def test_train_graph_decodes_the_crop_window_and_flips_per_sample():
    jpeg = _jpeg([RED, BLUE], 64, 64)
    anchors = np.array([[32, 0], [0, 0]], dtype=np.int32)  # (x, y): right half, whole image
    shapes = np.array([[32, 64], [64, 64]], dtype=np.int32)  # (w, h)
    flips = np.array([0, 1], dtype=np.int32)
    images = _run(CONFIG, ([jpeg, jpeg], anchors, shapes, flips), train=True)
    assert images.shape == (2, 3, 32, 32) and images.dtype == np.uint8
    right_half = _mean_colour(images[0].astype(float))
    assert right_half[2] > 200 and right_half[0] < 40  # only the blue half was decoded
    flipped = images[1].astype(float)
    assert _mean_colour(flipped[:, :, :12])[2] > 200  # blue now on the left
    assert _mean_colour(flipped[:, :, -12:])[0] > 200  # red on the right


def test_val_graph_resizes_the_shorter_side_then_crops_the_centre():
    jpeg = _jpeg([RED, GREEN, BLUE], 40, 120)  # resized to 40x120, centre 32x32 is green
    images = _run(CONFIG, [jpeg, jpeg], train=False)
    assert images.shape == (2, 3, 32, 32)
    centre = _mean_colour(images[0].astype(float))
    assert centre[1] > 200 and centre[0] < 40 and centre[2] < 40


@pytest.mark.parametrize("channels_last", [False, True])
def test_float_output_is_imagenet_normalised_in_the_requested_layout(channels_last):
    config = DataConfig(
        root="unused", image_size=32, val_resize=32, num_threads=1, channels_last=channels_last
    )
    raw = _run(CONFIG, [_jpeg([RED], 32, 32)] * 2, train=False)
    images = _run(config, [_jpeg([RED], 32, 32)] * 2, train=False)
    assert images.dtype == np.float32
    assert images.shape == ((2, 32, 32, 3) if channels_last else (2, 3, 32, 32))
    chw = images.transpose(0, 3, 1, 2) if channels_last else images
    mean = np.array(config.mean).reshape(1, 3, 1, 1)
    std = np.array(config.std).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(chw, (raw / 255.0 - mean) / std, atol=1e-4)
