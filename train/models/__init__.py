"""Template-mixture networks and their baselines (README, "The method" §1-3).

``build(name, variant, num_classes, mode, num_tasks, **overrides)`` constructs a registered
model; every model's forward is ``model(x, task=0)``. The helpers below serve the optimizer
(``param_groups``, ``freeze_templates``), reports (``count_params``, ``flops_per_image``,
``summary``) and interpretability (``alpha_matrices``, ``write_alpha``).
"""

from train.models.analysis import alpha_matrices, flops_per_image, summary, write_alpha
from train.models.layers import MixingConfig, TemplateBank
from train.models.matching import MODES, MatchedPair, MatchingConfig, match
from train.models.network import ModelConfig, Network
from train.models.params import count_params, freeze_templates, param_groups, share_logits_from
from train.models.registry import build, list_models, model_config

__all__ = [
    "MODES",
    "MatchedPair",
    "MatchingConfig",
    "MixingConfig",
    "ModelConfig",
    "Network",
    "TemplateBank",
    "alpha_matrices",
    "build",
    "count_params",
    "flops_per_image",
    "freeze_templates",
    "list_models",
    "match",
    "model_config",
    "param_groups",
    "share_logits_from",
    "summary",
    "write_alpha",
]
