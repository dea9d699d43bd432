"""The sample order: exact-once epochs and evaluation at any world size, reproducible crops."""

import numpy as np
import pytest

from data_pipeline.order import EvalOrder, TrainOrder, crop_windows, epoch_permutation


def _epoch(num_samples, batch_size, world_size, drop_last, seed=0, epoch=0):
    """Per rank, the list of index batches of one whole epoch (walking cursors like the loader)."""
    permutation = epoch_permutation(num_samples, seed, epoch)
    orders = [
        TrainOrder(num_samples, batch_size, r, world_size, drop_last) for r in range(world_size)
    ]
    steps, cursor = [], 0
    while orders[0].step_size(cursor):
        batches = []
        for order in orders:
            positions, next_cursor = order.positions(cursor)
            batches.append(permutation[positions])
        steps.append(batches)
        cursor = next_cursor
    assert len(steps) == orders[0].steps_per_epoch
    return steps


def test_permutation_reproducible_and_changes_with_seed_and_epoch():
    a = epoch_permutation(1000, seed=3, epoch=5)
    assert np.array_equal(a, epoch_permutation(1000, seed=3, epoch=5))
    assert np.array_equal(np.sort(a), np.arange(1000))
    assert not np.array_equal(a, epoch_permutation(1000, seed=3, epoch=6))
    assert not np.array_equal(a, epoch_permutation(1000, seed=4, epoch=5))


@pytest.mark.parametrize(
    ("num_samples", "batch_size", "world_size", "drop_last"),
    [(100, 4, 3, True), (100, 4, 3, False), (97, 5, 4, False), (64, 8, 8, True), (10, 3, 1, False)],
)
def test_train_epoch_visits_each_sample_at_most_once_and_drops_only_the_stated_remainder(
    num_samples, batch_size, world_size, drop_last
):
    steps = _epoch(num_samples, batch_size, world_size, drop_last)
    seen = np.concatenate([b for step in steps for b in step])
    assert len(np.unique(seen)) == len(seen)
    dropped = num_samples - len(seen)
    limit = num_samples % (batch_size * world_size) if drop_last else world_size - 1
    assert 0 <= dropped <= limit
    for step in steps:  # every rank has the same batch size at each step
        assert len({len(b) for b in step}) == 1


def test_global_batches_are_identical_across_world_sizes_with_the_same_global_batch():
    two = _epoch(60, 3, 2, drop_last=False)
    one = _epoch(60, 6, 1, drop_last=False)
    assert len(two) == len(one)
    for step_two, step_one in zip(two, one, strict=True):
        assert np.array_equal(np.concatenate(step_two), step_one[0])


def test_rank_epoch_indices_matches_walking_the_cursor():
    permutation = epoch_permutation(103, 1, 0)
    steps = _epoch(103, 4, 5, drop_last=False, seed=1)
    for rank in range(5):
        order = TrainOrder(103, 4, rank, 5, drop_last=False)
        expected = np.concatenate([step[rank] for step in steps])
        assert np.array_equal(order.rank_epoch_indices(permutation), expected)


@pytest.mark.parametrize(
    ("num_samples", "world_size", "batch_size"), [(10, 3, 2), (7, 8, 4), (50, 4, 50), (1, 1, 1)]
)
def test_eval_counts_every_sample_exactly_once_with_equal_steps_and_shapes(
    num_samples, world_size, batch_size
):
    orders = [EvalOrder(num_samples, batch_size, r, world_size) for r in range(world_size)]
    counted = []
    for step in range(orders[0].steps_per_epoch):
        batches = [order.batch(step) for order in orders]
        assert len({len(indices) for indices, _ in batches}) == 1
        for indices, valid in batches:
            assert np.all((indices >= 0) & (indices < num_samples))
            counted.extend(indices[valid])
    assert sorted(counted) == list(range(num_samples))
    assert len({order.steps_per_epoch for order in orders}) == 1


def test_crop_windows_fit_their_images_and_are_a_pure_function_of_the_sample():
    rng = np.random.default_rng(0)
    sizes = rng.integers(20, 500, size=(400, 2)).astype(np.int32)
    indices = np.arange(400) * 7 + 11
    kwargs = dict(seed=5, epoch=2, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3))
    anchors, shapes, flips = crop_windows(sizes, indices, **kwargs)
    assert np.all(anchors >= 0) and np.all(shapes >= 1)
    assert np.all(anchors[:, 0] + shapes[:, 0] <= sizes[:, 1])  # x + w <= W
    assert np.all(anchors[:, 1] + shapes[:, 1] <= sizes[:, 0])  # y + h <= H
    area = shapes.prod(axis=1) / sizes.prod(axis=1)
    assert area.min() < 0.3 and area.max() > 0.8
    assert 0.35 < flips.mean() < 0.65
    # the same sample gets the same window whatever batch it is in; another epoch changes it
    sub = slice(100, 110)
    again = crop_windows(sizes[sub][::-1], indices[sub][::-1], **kwargs)
    assert np.array_equal(again[0][::-1], anchors[sub]) and np.array_equal(
        again[2][::-1], flips[sub]
    )
    later = crop_windows(sizes, indices, **{**kwargs, "epoch": 3})
    assert not np.array_equal(later[0], anchors)


def test_crop_windows_fall_back_to_a_ratio_clamped_centre_crop_for_extreme_images():
    sizes = np.array([[10, 1000], [1000, 10]], dtype=np.int32)  # (H, W): very wide, very tall
    anchors, shapes, _ = crop_windows(
        sizes, np.arange(2), seed=0, epoch=0, scale=(0.9, 1.0), ratio=(3 / 4, 4 / 3)
    )
    assert shapes.tolist() == [[13, 10], [10, 13]]  # (w, h)
    assert anchors.tolist() == [[493, 0], [0, 493]]  # (x, y), centred
