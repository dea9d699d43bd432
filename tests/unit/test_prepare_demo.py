"""`blockmix prepare demo`: layout, split, domains and byte-for-byte determinism."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from data_pipeline.index_format import load_index
from data_pipeline.prepare.demo import DOMAINS, demo_domains, load_domain, prepare_demo
from train.cli import main
from train.errors import BlockmixError


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("demo")
    assert main(["prepare", "demo", str(out)]) == 0
    return out


def _files(root: Path) -> dict[str, bytes]:
    return {
        str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()
    }


def test_two_runs_write_identical_bytes(demo: Path, tmp_path: Path):
    prepare_demo(tmp_path)
    first, second = _files(demo), _files(tmp_path)
    assert (
        len(first) == 4 * 1797 + 4 * 3 + 2 + 1
    )  # images; per domain index+report; top index; domains.json
    assert first.keys() == second.keys()
    assert [name for name in first if first[name] != second[name]] == []


def test_layout_and_default_domain(demo: Path):
    assert json.loads((demo / "domains.json").read_text())["default"] == "digits"
    assert demo_domains(demo) == list(DOMAINS) == ["digits", "inverted", "noisy", "photo"]
    index = load_index(demo)
    assert index.root == demo / "digits" and index.classes == [str(d) for d in range(10)]
    train, val = index.splits["train"], index.splits["val"]
    assert (len(train), len(val)) == (1438, 359)
    assert train.files[0] == "train/0/0000.jpg" and set(train.sizes.ravel().tolist()) == {32}
    per_class = np.bincount(train.labels) + np.bincount(val.labels)
    assert np.array_equal(
        np.bincount(val.labels), np.round(per_class * 0.2).astype(int)
    )  # stratified
    assert not set(train.files) & {f.replace("val/", "train/") for f in val.files}
    for domain in DOMAINS:
        other = load_domain(demo, domain)
        assert other.root == demo / domain
        assert all(other.splits[s].files == index.splits[s].files for s in ("train", "val"))
    with pytest.raises(
        BlockmixError, match="no demo domain 'mnist'; choose one of digits, inverted"
    ):
        load_domain(demo, "mnist")


def test_domains_are_variants_of_the_same_digits(demo: Path):
    def pixels(domain: str) -> np.ndarray:
        return np.asarray(Image.open(demo / domain / "train" / "0" / "0000.jpg"), np.float64)

    digits, inverted, noisy, photo = (pixels(d) for d in DOMAINS)
    assert digits.shape == (32, 32, 3) and digits.mean() > 128  # dark ink on light paper
    assert np.abs(inverted - (255 - digits)).mean() < 4
    assert 10 < np.abs(noisy - digits).mean() < 60
    assert np.abs(photo[..., 0] - photo[..., 2]).mean() > 5  # colour from a real photo
