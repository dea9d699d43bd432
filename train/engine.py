"""DeepSpeed from the blockmix config: the generated DeepSpeed config, the optimizer, the EMA.

Nothing here is hand-written DeepSpeed JSON: batch, accumulation, ZeRO stage, precision and
clipping come from the config; ``deepspeed.extra`` is merged last for anything else.

Precision (``train.precision``): ``bf16`` and ``fp16`` are autocast mixed precision (DeepSpeed's
``torch_autocast`` section): weights, gradients, optimizer state and BatchNorm (its statistics
and its arithmetic) stay fp32, convolutions and matmuls run in the low precision, as in the AMP
recipes for CNNs. ``bf16_full`` and ``fp16_full`` are DeepSpeed's ``bf16``/``fp16`` modes, which
cast the whole network, BatchNorm included. ``auto`` is bf16 autocast on a GPU with bf16, else
fp32.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from train.config import Config, OptimConfig
from train.errors import BlockmixError
from train.host_memory import keep_freed_memory

NO_DECAY_GROUPS = ("norm_templates", "bn", "logits")


def accumulation_steps(config: Config, world_size: int) -> int:
    """Micro-batches per optimizer step that keep ``train.global_batch`` at any world size."""
    per_step = config.data.batch_size * world_size
    global_batch = config.train.global_batch or per_step
    if global_batch % per_step:
        raise BlockmixError(
            f"train.global_batch={global_batch} is not a multiple of data.batch_size x world size "
            f"({config.data.batch_size} x {world_size}); change either"
        )
    return global_batch // per_step


#: ``train.precision`` -> (DeepSpeed section, dtype name); autocast modes keep BN and weights fp32
PRECISIONS: dict[str, tuple[str, str] | None] = {
    "fp32": None,
    "bf16": ("torch_autocast", "bfloat16"),
    "fp16": ("torch_autocast", "float16"),
    "bf16_full": ("bf16", "bfloat16"),
    "fp16_full": ("fp16", "float16"),
}


def precision(config: Config, on_gpu: bool) -> str:
    """The resolved precision: ``auto`` is bf16 autocast on a GPU with bf16, else fp32. Autocast
    bf16 also runs on the CPU; fp16 and the full low-precision modes need a GPU."""
    wanted = config.train.precision
    if wanted == "auto":
        return "bf16" if on_gpu and torch.cuda.is_bf16_supported() else "fp32"
    if wanted not in PRECISIONS:
        raise BlockmixError(
            f"train.precision: unknown {wanted!r}; use auto or one of {', '.join(PRECISIONS)}"
        )
    if wanted not in ("fp32", "bf16") and not on_gpu:
        raise BlockmixError(
            f"train.precision={wanted} needs a GPU; use fp32, bf16 (autocast) or auto on the CPU"
        )
    return wanted


def precision_section(mode: str) -> dict[str, Any]:
    """The DeepSpeed config entries of a resolved precision ``mode``."""
    entry = PRECISIONS[mode]
    if entry is None:
        return {}
    section, dtype = entry
    if section == "torch_autocast":
        # No module is marked "lower precision safe": gradients are fp32 parameters' gradients
        # and are reduced in fp32, as under torch AMP with DDP.
        autocast = {"enabled": True, "dtype": dtype, "lower_precision_safe_modules": []}
        return {section: autocast}
    if section == "fp16":
        return {section: {"enabled": True, "initial_scale_power": 16}}
    return {section: {"enabled": True}}


def deepspeed_config(
    config: Config, world_size: int, on_gpu: bool, load_universal: bool = False
) -> dict[str, Any]:
    """The DeepSpeed config dict generated from the blockmix config.

    ``load_universal`` prepares the engine to load a universal checkpoint (a ZeRO-3 resume at
    another world size).
    """
    accum = accumulation_steps(config, world_size)
    stage = config.train.zero_stage
    zero: dict[str, Any] = {"stage": stage}
    if stage in (1, 2):
        zero["elastic_checkpoint"] = True  # ZeRO-1/2 shards reload at another world size
    ds: dict[str, Any] = {
        "train_batch_size": config.data.batch_size * world_size * accum,
        "train_micro_batch_size_per_gpu": config.data.batch_size,
        "gradient_accumulation_steps": accum,
        "zero_optimization": zero,
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 2**31 - 1,
        "wall_clock_breakdown": False,
    }
    if config.train.grad_clip > 0:
        ds["gradient_clipping"] = config.train.grad_clip
    if load_universal:
        ds["checkpoint"] = {"load_universal": True}
    ds |= precision_section(precision(config, on_gpu))
    return _deep_merge(ds, config.deepspeed.extra)


def optimizer_groups(
    groups: dict[str, list[nn.Parameter]], weight_decay: float, logits_lr_scale: float = 1.0
) -> list[dict[str, Any]]:
    """Optimizer groups: decayed weights; BN, mixture logits and biases without decay; with a
    ``logits_lr_scale`` other than 1, the logits in a third group of their own whose rate is that
    multiple of the scheduled rate (`set_lr`). At 1 the groups, and so the checkpoints'
    optimizer state, stay those of earlier runs."""
    own_group = logits_lr_scale != 1.0
    decay, no_decay, logits = [], [], []
    for name, params in groups.items():
        for param in params:
            if not param.requires_grad:
                continue
            if name == "logits" and own_group:
                logits.append(param)
            elif name in NO_DECAY_GROUPS or param.ndim <= 1:
                no_decay.append(param)
            else:
                decay.append(param)
    # DeepSpeed's elastic ZeRO-1/2 checkpoints read a group-level "step" (torch keeps it per
    # tensor); a constant one lets them reshard any torch optimizer's state.
    out = [
        {"params": decay, "weight_decay": weight_decay, "step": 0},
        {"params": no_decay, "weight_decay": 0.0, "step": 0},
    ]
    if logits:
        out.append({"params": logits, "weight_decay": 0.0, "step": 0, "lr_scale": logits_lr_scale})
    return out


def build_optimizer(
    groups: list[dict[str, Any]], config: OptimConfig, on_gpu: bool = False
) -> torch.optim.Optimizer:
    """SGD with momentum, AdamW or LAMB over the given parameter groups. LAMB is DeepSpeed's
    fused CUDA kernel on a GPU (where its op builds), blockmix's `Lamb` on the CPU."""
    groups = [group for group in groups if group["params"]]
    if config.name == "sgd":
        return torch.optim.SGD(
            groups, lr=config.lr, momentum=config.momentum, nesterov=config.nesterov
        )
    if config.name == "adamw":
        return torch.optim.AdamW(groups, lr=config.lr, betas=config.betas, eps=config.eps)
    if on_gpu:
        fused = _fused_lamb(groups, config)
        if fused is not None:
            return fused
    return Lamb(groups, lr=config.lr, betas=config.betas, eps=config.eps)


def _fused_lamb(groups: list[dict[str, Any]], config: OptimConfig) -> torch.optim.Optimizer | None:
    """DeepSpeed's FusedLamb (one CUDA kernel per tensor, no host sync), or None with a warning
    where its op cannot be built or loaded here. Unlike `Lamb`, it clamps the trust ratio to
    [0.01, 10] (DeepSpeed's defaults)."""
    from deepspeed.ops.lamb import FusedLamb
    from deepspeed.ops.op_builder import FusedLambBuilder

    if not FusedLambBuilder().is_compatible(verbose=False):
        warnings.warn(
            "DeepSpeed's FusedLamb op is not available here; using blockmix's Lamb", stacklevel=3
        )
        return None
    try:
        return FusedLamb(groups, lr=config.lr, betas=config.betas, eps=config.eps)
    except (ImportError, OSError, RuntimeError) as error:
        warnings.warn(
            f"DeepSpeed's FusedLamb failed to load ({error}); using blockmix's Lamb", stacklevel=3
        )
        return None


def initialize(
    model: nn.Module,
    groups: dict[str, list[nn.Parameter]],
    config: Config,
    load_universal: bool = False,
):
    """The DeepSpeed engine for ``model`` (process group already up); returns the engine. Also
    fixes the host allocator for training (`host_memory.keep_freed_memory`)."""
    import deepspeed

    keep_freed_memory()

    world_size = torch.distributed.get_world_size()
    on_gpu = torch.cuda.is_available()
    optim = config.optim
    decay_groups = optimizer_groups(groups, optim.weight_decay, optim.logits_lr_scale)
    optimizer = build_optimizer(decay_groups, optim, on_gpu)
    engine, _, _, _ = deepspeed.initialize(
        model=model,
        optimizer=optimizer,
        config=deepspeed_config(config, world_size, on_gpu, load_universal),
    )
    return engine


def set_lr(engine: Any, lr: float) -> None:
    """Set every optimizer group's rate to ``lr`` times its ``lr_scale`` (the schedule is
    computed by the caller)."""
    for group in engine.optimizer.param_groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)


def input_dtype(engine: Any) -> torch.dtype:
    """The dtype the engine's module expects its inputs in (fp32 under autocast)."""
    if engine.bfloat16_enabled():
        return torch.bfloat16
    if engine.fp16_enabled():
        return torch.float16
    return torch.float32


class Lamb(torch.optim.Optimizer):
    """LAMB (You et al. 2019): AdamW's update scaled per tensor by ||w|| / ||update||.

    The trust ratio stays a tensor (no host synchronisation per tensor); the step count is a
    CPU tensor.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-6,
        weight_decay: float = 0.0,
    ) -> None:
        super().__init__(
            params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay}
        )

    @torch.no_grad()
    def step(self, closure: Any = None) -> Any:
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["step"] = torch.zeros((), dtype=torch.float32)
                    state["exp_avg"] = torch.zeros_like(param)
                    state["exp_avg_sq"] = torch.zeros_like(param)
                state["step"] += 1
                step = float(state["step"])
                state["exp_avg"].mul_(beta1).add_(param.grad, alpha=1 - beta1)
                state["exp_avg_sq"].mul_(beta2).addcmul_(param.grad, param.grad, value=1 - beta2)
                mean = state["exp_avg"] / (1 - beta1**step)
                var = state["exp_avg_sq"] / (1 - beta2**step)
                update = mean / (var.sqrt() + group["eps"]) + group["weight_decay"] * param
                weight_norm, update_norm = param.norm(), update.norm()
                usable = (weight_norm > 0) & (update_norm > 0)
                trust = torch.where(usable, weight_norm / update_norm, torch.ones_like(update_norm))
                param.add_(update.mul_(trust), alpha=-group["lr"])
        return loss


class EMA:
    """Exponential moving average of a module's parameters and buffers (ZeRO stages 0-2)."""

    def __init__(self, module: nn.Module, decay: float) -> None:
        self.decay = decay
        self.shadow = {k: v.detach().clone().float() for k, v in module.state_dict().items()}

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        """Move the average towards the module's current weights (after an optimizer step)."""
        for key, value in module.state_dict().items():
            if value.is_floating_point():
                self.shadow[key].lerp_(value.float(), 1.0 - self.decay)
            else:
                self.shadow[key].copy_(value)

    def state_dict(self) -> dict[str, Any]:
        return {"decay": self.decay, "shadow": self.shadow}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.decay = state["decay"]
        self.shadow = {k: v.clone() for k, v in state["shadow"].items()}


def _deep_merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _deep_merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out
