"""Parameter bookkeeping for optimizers and reports: groups, freezing, counts."""

from __future__ import annotations

from torch import nn

from train.models.layers import Block, TaskBatchNorm2d, TemplateBank

GROUPS = ("templates", "norm_templates", "logits", "bn", "heads", "other")


def param_groups(model: nn.Module) -> dict[str, list[nn.Parameter]]:
    """Trainable parameters by role: ``templates`` (banks' kernel templates), ``norm_templates``
    (banks' BN gamma/beta and bias templates: no weight decay), ``logits`` (mixture
    logits/coefficients: no weight decay), ``bn`` (gamma/beta of unshared layers: no weight
    decay), ``heads`` (per-task classifiers), ``other``."""
    role: dict[int, str] = {}
    for module in model.modules():
        if isinstance(module, TemplateBank):
            role[id(module.templates)] = "templates"
            role[id(module.norm_templates)] = "norm_templates"
            role[id(module.logits)] = "logits"
        elif isinstance(module, TaskBatchNorm2d) and module.weight is not None:
            role[id(module.weight)] = role[id(module.bias)] = "bn"
        elif isinstance(module, Block) and module.params is not None:
            for name in module.spec.norms():
                role[id(module.params[f"{name}_weight"])] = "bn"
                role[id(module.params[f"{name}_bias"])] = "bn"
    heads = getattr(model, "heads", None)
    if heads is not None:
        role.update({id(p): "heads" for p in heads.parameters()})
    groups: dict[str, list[nn.Parameter]] = {name: [] for name in GROUPS}
    for param in model.parameters():
        if param.requires_grad:
            groups[role.get(id(param), "other")].append(param)
    return groups


def freeze_templates(model: nn.Module) -> None:
    """Stop training every bank's templates (transfer and adaptation train the rest)."""
    for module in model.modules():
        if isinstance(module, TemplateBank):
            for matrix in module.matrices():
                matrix.requires_grad_(False)


def share_logits_from(model: nn.Module, position: int) -> None:
    """Mixed positions ``position`` onwards (bank rows counted in network order) use task 0's
    mixture logits for every task; the other tasks' logits there stop mattering."""
    start = 0
    for module in model.modules():
        if isinstance(module, TemplateBank):
            module.shared_from = min(max(position - start, 0), module.num_positions)
            start += module.num_positions


def count_params(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) parameters; buffers such as BN statistics never count."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
