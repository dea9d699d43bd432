"""The training run: build everything from the config, resume, loop, evaluate, report.

`Trainer.fit` is the loop a reader should see in one screenful: data -> forward -> loss ->
backward -> step -> log -> checkpoint. Everything that survives a resume is a stateful registered
with the `Checkpointer`; the learning rate is a pure function of the step.
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F

from train import distributed
from train import engine as ds
from train.checkpoint import Checkpointer, RNGState, find_latest, needs_universal
from train.config import Config, flat_dict, method_settings, save_config
from train.errors import BlockmixError
from train.loggers import Logger, NullLogger, TensorBoardLogger
from train.metrics import ClassificationMetrics, StepTimer, evaluate
from train.schedules import warmup_cosine

CONFIG_FILE = "config.yaml"
RESULTS_FILE = "results.json"


class Progress:
    """Where the run is: optimizer steps done and training wall time so far (a stateful)."""

    def __init__(self) -> None:
        self.step = 0
        self.wall_s = 0.0

    def state_dict(self) -> dict[str, Any]:
        return {"step": self.step, "wall_s": self.wall_s}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.step, self.wall_s = int(state["step"]), float(state["wall_s"])


class Trainer:
    """One rank of a run in ``config.run.dir``; resumes from its latest checkpoint if any.

    ``train_loader`` replaces the DALI training loader (benchmarks feed in-memory tensors); it
    needs the loader's ``steps_per_epoch``, ``num_classes``, ``data_time``, state and ``close``.
    """

    def __init__(
        self, config: Config, env: distributed.DistEnv, train_loader: Any | None = None
    ) -> None:
        from data_pipeline.loader import DaliLoader
        from train import models

        self.config, self.env = config, env
        self.run_dir = Path(config.run.dir)
        self.device = distributed.init(env)
        self.logger: Logger = NullLogger()
        torch.manual_seed(config.run.seed)  # identical initial weights on every rank
        mc = config.model
        build_args = dict(name=mc.name, variant=mc.variant, num_classes=mc.num_classes)
        build_args.update(mode=mc.mode, num_tasks=mc.num_tasks, **mc.build_kwargs())
        model = models.build(**build_args)
        with torch.device("meta"):
            self.flops = models.flops_per_image(models.build(**build_args), config.data.image_size)
        self.params = models.count_params(model)
        latest = find_latest(self.run_dir / "checkpoints")
        universal = latest is not None and needs_universal(latest[1], env.world_size)
        self.engine = ds.initialize(model, models.param_groups(model), config, universal)
        self.accum = self.engine.gradient_accumulation_steps()
        self.dtype = ds.input_dtype(self.engine)
        self.ema = (
            ds.EMA(self.engine.module, config.train.ema_decay) if config.train.ema_decay else None
        )
        device_id = env.local_rank if self.device.startswith("cuda") else None
        loader_args = dict(rank=env.rank, world_size=env.world_size, device_id=device_id)
        self.train_loader = train_loader or DaliLoader(config.data, train=True, **loader_args)
        self.val_loader = DaliLoader(config.data, train=False, **loader_args)
        if self.train_loader.num_classes != mc.num_classes:
            raise BlockmixError(
                f"model.num_classes={mc.num_classes} but data.root has "
                f"{self.train_loader.num_classes} classes; set model.num_classes"
            )
        steps_per_epoch = self.train_loader.steps_per_epoch / self.accum
        self.total_steps = config.train.steps or math.ceil(config.train.epochs * steps_per_epoch)
        self.steps_per_epoch = steps_per_epoch
        self.progress = Progress()
        shared: dict[str, Any] = {"progress": self.progress}
        if self.ema is not None:
            shared["ema"] = self.ema
        self.checkpointer = Checkpointer(
            self.run_dir / "checkpoints",
            config.checkpoint,
            per_rank={"loader": self.train_loader, "rng": RNGState()},
            shared=shared,
        )
        _seed_rank(config.run.seed, env.rank)
        if latest is not None:
            self.checkpointer.load(self.engine, *latest)
        self.checkpointer.install_signal_handlers()
        self.train_metrics = ClassificationMetrics(mc.num_classes, self.device)
        self.val_metrics = ClassificationMetrics(mc.num_classes, self.device)
        if env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(config, self.run_dir / CONFIG_FILE)
            self.logger = TensorBoardLogger(self.run_dir / "tb")

    def fit(self) -> dict[str, Any] | None:
        """Train to ``total_steps``; return the results, or None when stopped early to resume."""
        cfg, step = self.config.train, self.progress.step
        smoothing = cfg.label_smoothing
        batches, timer, images_per_s = self._micro_batches(), StepTimer(), []
        bar = _progress_bar(self.env.is_main and cfg.progress, self.total_steps, step)
        start = time.perf_counter() - self.progress.wall_s
        while step < self.total_steps:
            lr = learning_rate(self.config, step, self.total_steps)
            ds.set_lr(self.engine, lr)
            finite, data_s = torch.ones((), dtype=torch.bool, device=self.device), 0.0
            for _ in range(self.accum):  # the micro-batches of one optimizer step
                images, labels, _ = next(batches)
                data_s += self.train_loader.data_time
                logits = self.engine(images.to(self.device, self.dtype)).float()
                losses = F.cross_entropy(
                    logits, labels, reduction="none", label_smoothing=smoothing
                )
                loss = losses.mean()
                self.engine.backward(loss)
                self.engine.step()
                finite &= torch.isfinite(loss.detach())
                self.train_metrics.update(logits.detach(), labels, losses.detach())
            step = self.progress.step = step + 1
            self.progress.wall_s = time.perf_counter() - start
            timer.add(self.engine.train_batch_size(), data_s)
            if self.ema is not None:
                self.ema.update(self.engine.module)
            bad, save, stop = step_boundary(self.checkpointer, step, cfg.stop_after, finite)
            if bad:
                raise non_finite_error(self.checkpointer, step)
            if step % cfg.log_every == 0 or step == self.total_steps:
                images_per_s.append(self._log_train(step, lr, timer, bar))
            if cfg.eval_every and step % cfg.eval_every == 0 and step < self.total_steps:
                self._validate(step)
            if save or stop or step == self.total_steps:
                distributed.broadcast_buffers(self.engine.module)
                self.checkpointer.save(self.engine, step)
            bar.update(1)
            if stop and step < self.total_steps:
                bar.close()
                return None
        bar.close()
        return self._finish(images_per_s)

    def evaluate(self) -> dict[str, float]:
        """Loss, top-1 and top-5 over the whole val split, every sample counted once."""
        distributed.broadcast_buffers(self.engine.module)
        self.engine.eval()
        try:
            return evaluate(self.engine, self.val_loader, self.val_metrics, self.device, self.dtype)
        finally:
            self.engine.train()

    def close(self, clean: bool = True) -> None:
        """Release loaders and the logger; leave the process group (see `distributed.teardown`)."""
        self.logger.close()
        self.train_loader.close()
        self.val_loader.close()
        distributed.teardown(clean)

    @property
    def interrupted_by_signal(self) -> bool:
        """True when a SIGTERM stopped the run (its checkpoint is saved)."""
        return self.checkpointer.stop_requested

    def _micro_batches(self) -> Iterator[Any]:
        while True:
            yield from self.train_loader

    def _log_train(self, step: int, lr: float, timer: StepTimer, bar: Any) -> float:
        train = self.train_metrics.compute()
        self.train_metrics.reset()
        perf = timer.window()
        epoch = step / self.steps_per_epoch
        scalars = {**_prefixed("train", train), **_prefixed("perf", perf)}
        self.logger.log({**scalars, "train/lr": lr, "train/epoch": epoch}, step)
        rate = f"{perf['images_per_s']:.0f}"
        bar.set_postfix(
            epoch=f"{epoch:.2f}", loss=f"{train['loss']:.4f}", img_s=rate, refresh=False
        )
        return perf["images_per_s"]

    def _validate(self, step: int) -> dict[str, float]:
        """Evaluate; log the val scalars and every bank's alpha matrices."""
        from train.models import alpha_matrices

        val = self.evaluate()
        self.logger.log(_prefixed("val", val), step)
        self.logger.log_alphas(gathered(self.engine, alpha_matrices), step)
        return val

    def _finish(self, images_per_s: list[float]) -> dict[str, Any]:
        mc, step = self.config.model, self.progress.step
        val = self._validate(step)
        results = {
            "model": mc.name,
            "variant": mc.variant,
            "mode": mc.mode,
            **method_settings(self.config),
            "params": self.params,
            "flops": self.flops,
            "top1": val["top1"],
            "top5": val["top5"],
            "val_loss": val["loss"],
            "images_per_s": float(np.mean(images_per_s)) if images_per_s else None,
            "steps": step,
            "epochs": step / self.steps_per_epoch,
            "world_size": self.env.world_size,
            "seed": self.config.run.seed,
            "wall_time_s": self.progress.wall_s,
        }
        final = {"hparams/top1": val["top1"], "hparams/top5": val["top5"]}
        self.logger.log_hparams(flat_dict(self.config), final)
        if self.env.is_main:
            (self.run_dir / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
        return results


def learning_rate(config: Config, step: int, total_steps: int) -> float:
    """The scheduled rate of ``step`` (a pure function of the step)."""
    schedule = config.schedule
    return warmup_cosine(
        step,
        lr=config.optim.lr,
        total_steps=total_steps,
        warmup_steps=schedule.warmup_steps,
        min_lr_ratio=schedule.min_lr_ratio,
    )


def step_boundary(
    checkpointer: Checkpointer, step: int, stop_after: int, finite: torch.Tensor
) -> tuple[bool, bool, bool]:
    """(loss not finite, save, stop) after ``step``, agreed by all ranks in one collective."""
    stop = checkpointer.stop_requested or step == stop_after
    return _any_rank(not finite.item(), checkpointer.wants_save(step), stop)


def non_finite_error(checkpointer: Checkpointer, step: int) -> BlockmixError:
    """The error that stops a run whose loss became non-finite, naming what was kept."""
    latest = checkpointer.latest()
    kept = f"the last good checkpoint is {latest[0]}" if latest else "no checkpoint was saved yet"
    return BlockmixError(f"loss is not finite at step {step}; stopping ({kept})")


def gathered(engine: Any, read: Any) -> Any:
    """``read(module)`` with ZeRO-3's partitioned parameters gathered on every rank."""
    import deepspeed

    params = list(engine.module.parameters())
    enabled = engine.zero_optimization_stage() == 3
    with deepspeed.zero.GatheredParameters(params, enabled=enabled):
        return read(engine.module)


def _seed_rank(seed: int, rank: int) -> None:
    """Per-rank random streams (dropout, host-side augmentation) from the run seed."""
    torch.manual_seed(seed * 1000 + rank)
    np.random.seed((seed * 1000 + rank) % 2**32)
    random.seed(seed * 1000 + rank)


def _any_rank(*flags: bool) -> tuple[bool, ...]:
    """Each flag OR-ed over all ranks (one small collective per step)."""
    tensor = torch.tensor([int(f) for f in flags], dtype=torch.int32)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor, op=dist.ReduceOp.MAX)
    return tuple(bool(v) for v in tensor.tolist())


def _prefixed(prefix: str, metrics: dict[str, float]) -> dict[str, float]:
    return {f"{prefix}/{name}": value for name, value in metrics.items()}


def _progress_bar(enabled: bool, total: int, initial: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True)
