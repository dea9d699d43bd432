"""The loader end to end on real JPEGs: exact-once epochs and evaluation, bit-exact resume, errors.

Labels are the sample indices, so every batch says which samples it holds.
"""

import tarfile
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image

from data_pipeline.config import DataConfig
from data_pipeline.index_format import DatasetIndex, Split, save_index
from data_pipeline.loader import DaliLoader, check_num_classes, normalize
from train.errors import BlockmixError

NUM_SAMPLES = 20


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    """NUM_SAMPLES JPEGs of 40-72 px with structure (gradients + noise); label = sample index."""
    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    files, sizes = [], []
    for i in range(NUM_SAMPLES):
        height, width = (int(v) for v in rng.integers(40, 73, size=2))
        ys, xs = np.mgrid[0:height, 0:width]
        pixels = np.stack([xs * 255 // width, ys * 255 // height, (xs + ys + 9 * i) % 256], axis=-1)
        pixels = (pixels + rng.integers(0, 40, size=pixels.shape)).clip(0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(root / f"{i}.jpg", quality=90)
        files.append(f"{i}.jpg")
        sizes.append((height, width))
    split = Split(
        files, np.arange(NUM_SAMPLES, dtype=np.int64), np.array(sizes, dtype=np.int32), None
    )
    return DatasetIndex(root, [f"c{i}" for i in range(NUM_SAMPLES)], {"train": split, "val": split})


def _config(index, **changes):
    base = DataConfig(
        root=str(index.root), batch_size=2, image_size=32, val_resize=36, num_threads=1
    )
    return replace(base, **changes)


def _loaders(index, world_size, **changes):
    config = _config(index, **changes)
    return [
        DaliLoader(config, train=True, rank=r, world_size=world_size, index=index)
        for r in range(world_size)
    ]


def _take(loader, steps):
    """The next ``steps`` batches, crossing epoch ends like a step-based training loop does."""
    out = []
    while len(out) < steps:
        for batch in loader:
            out.append(batch)
            if len(out) == steps:
                break
    return out


def test_each_training_sample_once_per_epoch_across_ranks_and_reproducible(index):
    loaders = _loaders(index, world_size=3)
    assert loaders[0].steps_per_epoch == 3  # 20 samples, global batch 6: 2 dropped
    epochs = []
    for _ in range(2):
        labels = torch.cat([b.labels for loader in loaders for b in loader])
        assert len(labels.unique()) == len(labels) == 18
        epochs.append(labels)
    assert not torch.equal(epochs[0], epochs[1])
    first = [b.images for b in _loaders(index, world_size=3)[1]]
    again = [b.images for b in _loaders(index, world_size=3, num_threads=2)[1]]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))


def test_resume_at_the_same_world_size_is_bit_exact(index):
    reference = [_take(loader, 10) for loader in _loaders(index, world_size=2)]  # 2 epochs
    stopped = _loaders(index, world_size=2)
    states = [(_take(loader, 3), loader.state_dict())[1] for loader in stopped]
    for loader in stopped:
        loader.close()
    resumed = _loaders(index, world_size=2)
    for loader, state, expected in zip(resumed, states, reference, strict=True):
        loader.load_state_dict(state)
        for got, want in zip(_take(loader, 7), expected[3:], strict=True):
            assert torch.equal(got.images, want.images) and torch.equal(got.labels, want.labels)


def test_resume_from_two_ranks_on_one_rank_continues_at_the_same_global_sample(index):
    ref0, ref1 = (_take(loader, 10) for loader in _loaders(index, world_size=2))
    stopped = _loaders(index, world_size=2)
    states = [(_take(loader, 2), loader.state_dict())[1] for loader in stopped]
    assert states[0] == states[1]
    (single,) = _loaders(index, world_size=1, batch_size=4)
    single.load_state_dict(states[0])
    for got, want0, want1 in zip(_take(single, 8), ref0[2:], ref1[2:], strict=True):
        assert torch.equal(got.images, torch.cat([want0.images, want1.images]))
        assert torch.equal(got.labels, torch.cat([want0.labels, want1.labels]))


def test_eval_counts_each_sample_once_at_an_uneven_world_size(index):
    config = _config(index, val_batch_size=3)
    loaders = [DaliLoader(config, train=False, rank=r, world_size=3, index=index) for r in range(3)]
    assert len({loader.steps_per_epoch for loader in loaders}) == 1
    _take(loaders[0], 1)  # an interrupted pass restarts from the beginning
    for _ in range(2):
        counted = []
        for loader in loaders:
            batches = list(loader)
            assert [len(b.labels) for b in batches] == [3, 3, 1]
            counted.extend(torch.cat([b.labels[b.valid] for b in batches]).tolist())
        assert sorted(counted) == list(range(NUM_SAMPLES))


def test_tar_shards_give_the_same_pixels_as_files(index, tmp_path):
    split = index.splits["train"]
    offsets = []
    with tarfile.open(tmp_path / "shard-0.tar", "w") as tar:
        for name in split.files:
            tar.add(index.root / name, arcname=name)
    with tarfile.open(tmp_path / "shard-0.tar") as tar:
        members = {m.name: m for m in tar.getmembers()}
        offsets = [(members[n].offset_data, members[n].size) for n in split.files]
    sharded = Split(
        ["shard-0.tar"] * NUM_SAMPLES, split.labels, split.sizes, np.array(offsets, dtype=np.int64)
    )
    tar_index = DatasetIndex(tmp_path, index.classes, {"train": sharded, "val": sharded})
    from_files = DaliLoader(_config(index), train=True, index=index)
    from_tar = DaliLoader(_config(index), train=True, index=tar_index)
    for a, b in zip(from_files, from_tar, strict=True):
        assert torch.equal(a.images, b.images)


def test_uint8_output_with_device_normalisation_and_channels_last(index):
    floats = next(iter(DaliLoader(_config(index), train=True, index=index)))
    raw = next(iter(DaliLoader(_config(index, output="uint8"), train=True, index=index)))
    assert raw.images.dtype == torch.uint8
    torch.testing.assert_close(normalize(raw.images), floats.images, atol=1e-4, rtol=0)
    last = next(iter(DaliLoader(_config(index, channels_last=True), train=True, index=index)))
    assert last.images.shape == floats.images.shape
    assert last.images.is_contiguous(memory_format=torch.channels_last)
    assert torch.equal(last.images, floats.images)


def test_data_time_is_recorded_and_close_allows_a_fresh_start(index):
    loader = DaliLoader(_config(index), train=True, index=index)
    first = next(iter(loader))
    assert loader.data_time > 0
    loader.close()
    loader.load_state_dict({**loader.state_dict(), "epoch": 0, "cursor": 0})
    assert torch.equal(next(iter(loader)).images, first.images)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"batch_size": 11}, "data.batch_size"),  # 20 samples over 2 ranks: 10 each
        ({"train_split": "nope"}, "data.train_split"),
        ({"device": "tpu"}, "data.device"),
        ({"val_resize": 16}, "data.val_resize"),
        ({"seed": -1}, "data.seed"),
    ],
)
def test_bad_configuration_is_a_one_line_error_naming_the_field(index, changes, field):
    with pytest.raises(BlockmixError, match=field) as error:
        DaliLoader(_config(index, **changes), train=True, rank=0, world_size=2, index=index)
    assert "\n" not in str(error.value)


def test_a_saved_index_is_found_from_data_root_alone(index, tmp_path):
    save_index(index, tmp_path)
    from_disk = DaliLoader(_config(index, root=str(tmp_path)), train=False)
    in_memory = DaliLoader(_config(index), train=False, index=index)
    for a, b in zip(from_disk, in_memory, strict=True):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)


def test_missing_root_empty_split_class_count_and_foreign_state_are_refused(index, tmp_path):
    with pytest.raises(BlockmixError, match=r"data\.root .* is not a folder"):
        DaliLoader(_config(index, root=str(tmp_path / "absent")), train=True)
    with pytest.raises(BlockmixError, match=r"data\.root: .* no blockmix index"):
        DaliLoader(_config(index, root=str(tmp_path)), train=True)
    empty = Split([], np.zeros(0, np.int64), np.zeros((0, 2), np.int32), None)
    with pytest.raises(BlockmixError, match=r"data\.val_split='val' .* has no samples"):
        DaliLoader(_config(index), train=False, index=replace(index, splits={"val": empty}))
    check_num_classes(index, NUM_SAMPLES)
    with pytest.raises(BlockmixError, match=r"model\.num_classes=1000 .* 20 classes"):
        check_num_classes(index, 1000)
    loader = DaliLoader(_config(index), train=True, index=index)
    with pytest.raises(BlockmixError, match=r"data\.seed"):
        loader.load_state_dict({**loader.state_dict(), "seed": 1})


@pytest.mark.parametrize("damage", ["garbage", "missing"])
def test_a_file_damaged_after_indexing_is_a_one_line_error(index, tmp_path, damage):
    split = index.splits["train"]
    for name in split.files:
        (tmp_path / name).write_bytes((index.root / name).read_bytes())
    victim = tmp_path / split.files[0]
    if damage == "garbage":
        victim.write_bytes(b"not a jpeg at all" * 10)
    else:
        victim.unlink()
    damaged = DatasetIndex(tmp_path, index.classes, {"train": split})
    loader = DaliLoader(_config(index, batch_size=NUM_SAMPLES), train=True, index=damaged)
    with pytest.raises(BlockmixError, match=r"data\.root: could not load split 'train'") as error:
        next(iter(loader))
    assert "\n" not in str(error.value)


@pytest.mark.skipif(
    not torch.cuda.is_available(), reason="needs a CUDA GPU for DALI mixed decoding"
)
def test_gpu_decoding_gives_cuda_batches_close_to_cpu_decoding(index):
    on_cpu = DaliLoader(_config(index, device="cpu", output="uint8"), train=False, index=index)
    on_gpu = DaliLoader(_config(index, device="gpu", output="uint8"), train=False, index=index)
    for a, b in zip(on_cpu, on_gpu, strict=True):
        assert b.images.is_cuda and b.labels.is_cuda
        assert torch.equal(a.labels, b.labels.cpu())
        assert (a.images.float() - b.images.cpu().float()).abs().mean() < 2.0  # of 255 levels
