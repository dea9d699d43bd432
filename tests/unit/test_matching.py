"""Parameter matching: every registered model has deeper and compact pairs within 0.5%."""

import pytest
import torch

from train.errors import BlockmixError
from train.models import MODES, build, count_params, list_models, match, model_config, summary


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("name", list_models())
def test_matched_pairs_within_tolerance(name, mode):
    pair = match(model_config(name), mode)
    assert abs(pair.rel_diff) <= 0.005
    with torch.device("meta"):
        baseline = build(name, "baseline", mode=mode)
        tmix = build(name, "tmix", mode=mode)
    assert (count_params(baseline), count_params(tmix)) == (pair.baseline_params, pair.tmix_params)
    banks = summary(tmix)["banks"].values()
    if mode == "deeper":
        assert summary(tmix)["positions"] > summary(baseline)["positions"]
        assert pair.baseline.width_multiplier == 1.0
    else:
        assert all(b["templates"] < b["positions"] for b in banks)
        assert summary(tmix)["positions"] >= summary(baseline)["positions"]


def test_search_trims_when_logits_are_expensive():
    # 32 tasks of a small isometric net: the deeper variant's extra logits (32 tasks x 32
    # positions x 16 templates) exceed the tolerance, so the search must trim it.
    config = model_config(
        "isometric", num_classes=10, num_tasks=32, width=64, expansion=4, head_width=128
    )
    pair = match(config, "deeper")
    assert abs(pair.rel_diff) <= 0.005
    assert 0.005 * pair.baseline_params < 32 * 32 * 16
    assert pair.tmix.templates != (16,) or pair.tmix.width_multiplier < 1.0


def test_unknown_mode_is_a_user_error():
    with pytest.raises(BlockmixError, match="deeper, compact"):
        match(model_config("resnet18"), "wider")
