"""Runs with a ``tasks`` list: joint multi-task training, transfer, and domain adaptation.

Every optimizer step takes one batch of every task and sums their weighted losses (mixed
batches, one backward). Metrics, TensorBoard scalars (``train/<task>/*``, ``val/<task>/*``) and
``results.json`` (``tasks``: per-task ``top1``, ``top5``, ``val_loss``) are per task. With
``transfer.source`` the model starts from a trained run and trains only ``transfer.mode``'s parts;
with ``adapt.target`` the source tasks train first, then `train.adaptation.Adapter` adapts the
target task without its labels.
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from train import distributed
from train import engine as ds
from train.checkpoint import Checkpointer, RNGState, find_latest, needs_universal
from train.config import Config, flat_dict, method_settings, save_config
from train.errors import BlockmixError
from train.loggers import Logger, NullLogger, TensorBoardLogger, heatmap
from train.metrics import ClassificationMetrics, StepTimer, evaluate
from train.tasks import task_data
from train.trainer import (
    CONFIG_FILE,
    RESULTS_FILE,
    Progress,
    _prefixed,
    _progress_bar,
    _seed_rank,
    gathered,
    learning_rate,
    non_finite_error,
    step_boundary,
)

ALPHA_FILES = ("alpha.json", "alpha.csv")


class IndependentNetworks(nn.Module):
    """One single-task network per task: the independent per-task baselines."""

    def __init__(self, nets: list[nn.Module]) -> None:
        super().__init__()
        self.nets = nn.ModuleList(nets)
        self.num_tasks = len(nets)

    def forward(self, x: Tensor, task: int = 0) -> Tensor:
        return self.nets[task](x)

    def features(self, x: Tensor, task: int = 0) -> Tensor:
        return self.nets[task].features(x)


def task_names(config: Config) -> list[str]:
    """Task names (``tasks[t].name`` or the folder name), the adaptation target last."""
    names = [t.name or Path(t.root).name for t in config.tasks]
    if config.adapt.target:
        names.append(Path(config.adapt.target).name)
    return names


def build_model(config: Config) -> nn.Module:
    """The multi-task model: one shared network (or independent ones), a task per entry."""
    from train import models

    mc = config.model
    classes = [t.num_classes for t in config.tasks]
    if config.adapt.target:
        classes.append(classes[config.adapt.source_task])
    if config.multitask.independent:
        nets = [models.build(mc.name, "baseline", n, None, 1, **mc.build_kwargs()) for n in classes]
        return IndependentNetworks(nets)
    model = models.build(
        mc.name, mc.variant, tuple(classes), mc.mode, len(classes), **mc.build_kwargs()
    )
    if config.multitask.share_logits_from >= 0:
        models.share_logits_from(model, config.multitask.share_logits_from)
    return model


def alpha_image(alphas: dict[tuple[int, str], np.ndarray], cell: int = 12) -> np.ndarray:
    """One RGB image: a column per task, its banks' positions x templates heatmaps stacked."""
    tasks = sorted({task for task, _ in alphas})
    banks = list(dict.fromkeys(bank for _, bank in alphas))
    columns = [np.concatenate([alphas[(t, b)] for b in banks], axis=0) for t in tasks]
    gap = np.full((columns[0].shape[0], 1), np.nan)
    parts = [p for col in columns for p in (col, gap)][:-1]
    matrix = np.concatenate(parts, axis=1)
    image = heatmap(np.nan_to_num(matrix, nan=np.nanmin(matrix)), cell)
    image[:, np.repeat(np.isnan(matrix).all(0), cell)] = 255  # white gaps between tasks
    return image


class MultiTaskTrainer:
    """One rank of a multi-task, transfer or adaptation run (same lifecycle as `Trainer`)."""

    def __init__(self, config: Config, env: distributed.DistEnv) -> None:
        from data_pipeline.loader import DaliLoader
        from train import models
        from train.transfer import apply_mode, copy_task, init_from_source, source_state

        self.config, self.env = config, env
        self.run_dir = Path(config.run.dir)
        self.device = distributed.init(env)
        self.logger: Logger = NullLogger()
        self.names = task_names(config)
        self.num_sources = len(config.tasks)
        torch.manual_seed(config.run.seed)
        model = build_model(config)
        self.total_params = models.count_params(model, trainable_only=False)
        with torch.device("meta"):  # per image of one task
            self.flops = models.flops_per_image(build_model(config), config.data.image_size)
        if config.transfer.source:
            init_from_source(
                model, source_state(config.transfer.source), config.transfer.source_task
            )
            self.trained_params = apply_mode(model, config.transfer.mode)
        else:
            self.trained_params = models.count_params(model)
        if config.adapt.target:  # the target waits, untrained, as a copy of its source task
            copy_task(model, config.adapt.source_task, self.num_sources)
        latest = find_latest(self.run_dir / "checkpoints")
        universal = latest is not None and needs_universal(latest[1], env.world_size)
        self.engine = ds.initialize(model, models.param_groups(model), config, universal)
        self.accum = self.engine.gradient_accumulation_steps()
        self.dtype = ds.input_dtype(self.engine)
        device_id = env.local_rank if self.device.startswith("cuda") else None
        args = dict(rank=env.rank, world_size=env.world_size, device_id=device_id)
        roots = [t.root for t in config.tasks] + (
            [config.adapt.target] if config.adapt.target else []
        )
        datas = [task_data(config.data, root) for root in roots]
        self.train_loaders = [DaliLoader(d, train=True, **args) for d in datas]
        self.val_loaders = [DaliLoader(d, train=False, **args) for d in datas]
        classes = [t.num_classes for t in config.tasks]
        for i, (loader, n) in enumerate(
            zip(self.train_loaders[: self.num_sources], classes, strict=True)
        ):
            if loader.num_classes != n:
                raise BlockmixError(
                    f"tasks[{i}].num_classes={n} but {loader.config.root} has "
                    f"{loader.num_classes} classes; set tasks[{i}].num_classes"
                )
        steps = min(loader.steps_per_epoch for loader in self.train_loaders[: self.num_sources])
        self.steps_per_epoch = steps / self.accum
        self.total_steps = config.train.steps or math.ceil(
            config.train.epochs * self.steps_per_epoch
        )
        self.progress = Progress()
        per_rank: dict[str, Any] = {f"loader{t}": dl for t, dl in enumerate(self.train_loaders)}
        self.checkpointer = Checkpointer(
            self.run_dir / "checkpoints",
            config.checkpoint,
            per_rank={**per_rank, "rng": RNGState()},
            shared={"progress": self.progress},
        )
        _seed_rank(config.run.seed, env.rank)
        if latest is not None:
            self.checkpointer.load(self.engine, *latest)
        self.checkpointer.install_signal_handlers()
        all_classes = [loader.num_classes for loader in self.train_loaders]
        self.train_metrics = [ClassificationMetrics(n, self.device) for n in all_classes]
        self.val_metrics = [ClassificationMetrics(n, self.device) for n in all_classes]
        if env.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(config, self.run_dir / CONFIG_FILE)
            self.logger = TensorBoardLogger(self.run_dir / "tb")
        where = f"{self.trained_params:,} of {self.total_params:,} parameters trained"
        self._print(f"{', '.join(self.names[: self.num_sources])}: {where}")

    def fit(self) -> dict[str, Any] | None:
        """Train the source tasks to ``total_steps``; then adapt (if set) and report."""
        cfg, step = self.config.train, self.progress.step
        weights = [t.loss_weight for t in self.config.tasks]
        batches = [_forever(loader) for loader in self.train_loaders[: self.num_sources]]
        timer, images_per_s = StepTimer(), []
        bar = _progress_bar(self.env.is_main and cfg.progress, self.total_steps, step)
        start = time.perf_counter() - self.progress.wall_s
        while step < self.total_steps:
            lr = learning_rate(self.config, step, self.total_steps)
            ds.set_lr(self.engine, lr)
            finite, data_s = torch.ones((), dtype=torch.bool, device=self.device), 0.0
            for _ in range(self.accum):  # each micro-batch: one batch of every task
                loss = torch.zeros((), device=self.device)
                for task, (source, weight) in enumerate(zip(batches, weights, strict=True)):
                    images, labels, _ = next(source)
                    data_s += self.train_loaders[task].data_time
                    logits = self.engine(images.to(self.device, self.dtype), task).float()
                    losses = F.cross_entropy(
                        logits, labels, reduction="none", label_smoothing=cfg.label_smoothing
                    )
                    loss = loss + weight * losses.mean()
                    self.train_metrics[task].update(logits.detach(), labels, losses.detach())
                self.engine.backward(loss)
                self.engine.step()
                finite &= torch.isfinite(loss.detach())
            step = self.progress.step = step + 1
            self.progress.wall_s = time.perf_counter() - start
            timer.add(self.engine.train_batch_size() * len(batches), data_s)
            bad, save, stop = step_boundary(self.checkpointer, step, cfg.stop_after, finite)
            if bad:
                raise non_finite_error(self.checkpointer, step)
            if step % cfg.log_every == 0 or step == self.total_steps:
                images_per_s.append(self._log_train(step, lr, timer))
            if cfg.eval_every and step % cfg.eval_every == 0 and step < self.total_steps:
                self._validate(step, range(self.num_sources))
            if save or stop or step == self.total_steps:
                distributed.broadcast_buffers(self.engine.module)
                self.checkpointer.save(self.engine, step)
            bar.update(1)
            if stop and step < self.total_steps:
                bar.close()
                return None
        bar.close()
        return self._finish(images_per_s)

    def close(self, clean: bool = True) -> None:
        """Release loaders and the logger; leave the process group."""
        self.logger.close()
        for loader in self.train_loaders + self.val_loaders:
            loader.close()
        distributed.teardown(clean)

    @property
    def interrupted_by_signal(self) -> bool:
        """True when a SIGTERM stopped the run (its checkpoint is saved)."""
        return self.checkpointer.stop_requested

    def evaluate(self, task: int) -> dict[str, float]:
        """Loss, top-1 and top-5 of ``task`` over its whole val split."""
        distributed.broadcast_buffers(self.engine.module)
        module = self.engine.module
        module.eval()
        try:
            return evaluate(
                lambda x: module(x, task),
                self.val_loaders[task],
                self.val_metrics[task],
                self.device,
                self.dtype,
            )
        finally:
            module.train()

    def _log_train(self, step: int, lr: float, timer: StepTimer) -> float:
        scalars: dict[str, float] = {"train/lr": lr, "train/epoch": step / self.steps_per_epoch}
        for task in range(self.num_sources):
            metrics = self.train_metrics[task].compute()
            self.train_metrics[task].reset()
            scalars.update(_prefixed(f"train/{self.names[task]}", metrics))
        perf = timer.window()
        self.logger.log({**scalars, **_prefixed("perf", perf)}, step)
        return perf["images_per_s"]

    def _validate(self, step: int, tasks: Any) -> dict[str, dict[str, float]]:
        """Evaluate ``tasks``; log their scalars and the alpha matrices of all tasks."""
        results = {}
        for task in tasks:
            results[self.names[task]] = val = self.evaluate(task)
            self.logger.log(_prefixed(f"val/{self.names[task]}", val), step)
        self._log_alphas(step)
        return results

    def _log_alphas(self, step: int) -> None:
        from train.models import alpha_matrices

        alphas = gathered(self.engine, alpha_matrices)
        if not alphas:
            return
        self.logger.log_alphas(alphas, step)
        if isinstance(self.logger, TensorBoardLogger):
            self.logger.writer.add_image(
                "alpha/tasks", alpha_image(alphas), step, dataformats="HWC"
            )

    def _finish(self, images_per_s: list[float]) -> dict[str, Any]:
        from train.models import write_alpha

        step = self.progress.step
        per_task = self._validate(step, range(self.num_sources))
        mc = self.config.model
        results: dict[str, Any] = {
            "model": mc.name,
            "variant": "independent" if self.config.multitask.independent else mc.variant,
            "mode": mc.mode,
            **method_settings(self.config),
            "params": self.total_params,
            "total_params": self.total_params,
            "trained_params": self.trained_params,
            "flops": self.flops,
            "top1": float(np.mean([v["top1"] for v in per_task.values()])),
            "top5": float(np.mean([v["top5"] for v in per_task.values()])),
            "tasks": {
                name: {"top1": v["top1"], "top5": v["top5"], "val_loss": v["loss"]}
                for name, v in per_task.items()
            },
            "images_per_s": float(np.mean(images_per_s)) if images_per_s else None,
            "steps": step,
            "epochs": step / self.steps_per_epoch,
            "world_size": self.env.world_size,
            "seed": self.config.run.seed,
        }
        if self.config.transfer.source:
            results["transfer"] = {
                "source": self.config.transfer.source,
                "source_task": self.config.transfer.source_task,
                "mode": self.config.transfer.mode,
            }
        if self.config.adapt.target:
            results.update(self._adapt(step))
        results["wall_time_s"] = self.progress.wall_s
        self.logger.log_hparams(flat_dict(self.config), {"hparams/top1": results["top1"]})

        def write_alphas(module: nn.Module) -> None:
            if self.env.is_main:
                for name in ALPHA_FILES:
                    write_alpha(module, self.run_dir / name)

        gathered(self.engine, write_alphas)  # a collective under ZeRO-3: every rank enters
        if self.env.is_main:
            (self.run_dir / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
            self._print(
                json.dumps({k: results[k] for k in ("top1", "trained_params", "total_params")})
            )
        return results

    def _adapt(self, step: int) -> dict[str, Any]:
        """Adapt the target task without its labels; its val top-1 before and after."""
        from train.adaptation import Adapter

        cfg, target = self.config.adapt, self.num_sources
        module = self.engine.module
        before = self.evaluate(target)
        adapter = Adapter(module, target, list(range(self.num_sources)), cfg)
        sources = [_forever(loader) for loader in self.train_loaders[: self.num_sources]]
        history = adapter.run(sources, _forever(self.train_loaders[target]), self.device)
        after = self.evaluate(target)
        name = self.names[target]
        self.logger.log({f"adapt/{name}/top1_before": before["top1"]}, step)
        self.logger.log({f"adapt/{name}/top1_after": after["top1"]}, step + cfg.steps)
        self._log_alphas(step + cfg.steps)
        if self.env.is_main:
            from safetensors.torch import save_file

            state = {k: v.detach().float().contiguous() for k, v in module.state_dict().items()}
            save_file(state, str(self.run_dir / "adapted.safetensors"))
        return {
            "target": name,
            "target_top1_before": before["top1"],
            "target_top1_after": after["top1"],
            "adapt_loss": cfg.loss,
            "adapt_trained_params": adapter.trained_params(),
            "adapt_loss_first_last": [history[0], history[-1]],
        }

    def _print(self, line: str) -> None:
        if self.env.is_main:
            print(line, flush=True)


def _forever(loader: Any) -> Any:
    while True:
        yield from loader
