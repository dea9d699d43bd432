"""The training run, one `Trainer` for every run: build, resume, loop, evaluate, adapt, report.

A run trains a list of tasks (`train.tasks.run_tasks`); a config without a ``tasks`` list is the
run of one task. Every optimizer step takes one batch of every trained task and backpropagates
the sum of their weighted losses (mixed batches, one backward). With ``transfer.source`` the model
starts from a trained run's weights before the engine is built; with ``adapt.target`` the target
task adapts without its labels (`train.adaptation`) after training, before the report.

`Trainer.train` is the loop a reader should see in one screenful: data -> forward -> loss ->
backward -> step -> log -> checkpoint. A variant overrides a step (`batch_generator`,
`forward_backward_step`), never the loop. Everything that survives a resume is a stateful
registered with the `Checkpointer`; the learning rate is a pure function of the step.

Scalars: the task mean under ``train/*`` and ``val/*`` for every run, and for runs with a
``tasks`` list each task under ``train/<task>/*`` and ``val/<task>/*`` (see `train.rundir`).
"""

from __future__ import annotations

import json
import math
import random
import time
from collections.abc import Iterator, Sequence
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor

from data_pipeline.loader import model_input
from train import distributed
from train import engine as ds
from train.checkpoint import Checkpointer, RNGState, needs_universal
from train.config import Config, flat_dict, method_settings, to_yaml
from train.errors import BlockmixError
from train.loggers import Logger, NullLogger, TensorBoardLogger
from train.metrics import ClassificationMetrics, StepTimer, evaluate
from train.resume_config import check_resume
from train.rundir import RunDir
from train.runlock import hold_run
from train.schedules import warmup_cosine
from train.tasks import run_tasks
from train.textlog import LoggerGroup, TextLogger

# One micro-batch: ``(images, labels)`` of every trained task.
Batch = list[tuple[Tensor, Tensor]]


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

    ``train_loaders`` replace the DALI training loaders, one per model task (benchmarks and tests
    feed in-memory tensors); each needs the loader's ``steps_per_epoch``, ``num_classes``,
    ``data_time``, state and ``close``.
    """

    def __init__(
        self,
        config: Config,
        env: distributed.DistEnv,
        train_loaders: Sequence[Any] | None = None,
    ) -> None:
        from data_pipeline.loader import DaliLoader
        from train import models
        from train.taskmodel import build_model
        from train.transfer import prepare_tasks

        self.config, self.env = config, env
        self.run_dir = RunDir(config.run.dir)
        self.device = distributed.init(env)
        self.lock = hold_run(self.run_dir.path, env.is_main)
        self.logger: Logger = NullLogger()
        self.tasks = run_tasks(config)
        self.sources = self.tasks[: len(config.tasks) or 1]  # the trained tasks
        torch.manual_seed(config.run.seed)  # identical initial weights on every rank
        model = build_model(config)
        self.params = models.count_params(model)
        self.total_params = models.count_params(model, trainable_only=False)
        with torch.device("meta"):  # per image of one task
            self.flops = models.flops_per_image(build_model(config), config.data.image_size)
        self.trained_params = prepare_tasks(model, config)  # transfer, before the engine
        latest = self.run_dir.latest_checkpoint()
        check_resume(config, self.run_dir.path, latest, env.is_main)
        universal = latest is not None and needs_universal(latest[1], env.world_size)
        self.engine = ds.initialize(model, models.param_groups(model), config, universal)
        self.accum = self.engine.gradient_accumulation_steps()
        self.dtype = ds.input_dtype(self.engine)
        decay = config.train.ema_decay
        self.ema = ds.EMA(self.engine.module, decay) if decay else None
        device_id = env.local_rank if self.device.startswith("cuda") else None
        args = dict(rank=env.rank, world_size=env.world_size, device_id=device_id)
        self.train_loaders = list(
            train_loaders or [DaliLoader(t.data, train=True, **args) for t in self.tasks]
        )
        self.val_loaders = [DaliLoader(t.data, train=False, **args) for t in self.tasks]
        for task, loader in zip(self.sources, self.train_loaders, strict=False):
            if loader.num_classes != task.num_classes:
                raise BlockmixError(
                    f"{task.classes_key}={task.num_classes} but {task.data.root} has "
                    f"{loader.num_classes} classes; set {task.classes_key}"
                )
        steps = min(loader.steps_per_epoch for loader in self.train_loaders[: len(self.sources)])
        self.steps_per_epoch = steps / self.accum
        self.total_steps = config.train.steps or math.ceil(
            config.train.epochs * self.steps_per_epoch
        )
        self.progress, self.images_per_s = Progress(), []
        per_rank = {loader_key(config, t): dl for t, dl in enumerate(self.train_loaders)}
        shared: dict[str, Any] = {"progress": self.progress}
        if self.ema is not None:
            shared["ema"] = self.ema
        self.checkpointer = Checkpointer(
            self.run_dir.checkpoints,
            config.checkpoint,
            per_rank={**per_rank, "rng": RNGState()},
            shared=shared,
        )
        _seed_rank(config.run.seed, env.rank)
        if latest is not None:
            self.checkpointer.load(self.engine, *latest)
        self.checkpointer.install_signal_handlers()
        classes = [loader.num_classes for loader in self.train_loaders]
        self.train_metrics = [ClassificationMetrics(n, self.device) for n in classes]
        self.val_metrics = [ClassificationMetrics(n, self.device) for n in classes]
        if env.is_main:
            self.run_dir.write_config(to_yaml(config))
            self.logger = LoggerGroup(
                TensorBoardLogger(self.run_dir.tensorboard), TextLogger(self.total_steps)
            )
        names = ", ".join(task.name for task in self.sources)
        self._print(f"{names}: {self.trained_params:,} of {self.total_params:,} parameters trained")

    def fit(self) -> dict[str, Any] | None:
        """Train to ``total_steps``, adapt (with ``adapt.target``) and write ``results.json``;
        return the results, or None when stopped early (checkpoint saved) to resume."""
        if not self.train():
            return None
        results = self._results(self._validate(self.progress.step))
        if self.config.adapt.target:
            results.update(self.adapt())
        self._write(results)
        return results

    def train(self) -> bool:
        """The loop, to ``total_steps``; False when a signal or ``train.stop_after`` stopped it."""
        cfg, step = self.config.train, self.progress.step
        batches, timer = self.batch_generator(), StepTimer()
        bar = _progress_bar(self.env.is_main and cfg.progress, self.total_steps, step)
        start = time.perf_counter() - self.progress.wall_s
        while step < self.total_steps:
            lr = learning_rate(self.config, step, self.total_steps)
            ds.set_lr(self.engine, lr)
            finite, data_s = torch.ones((), dtype=torch.bool, device=self.device), 0.0
            for _ in range(self.accum):  # the micro-batches of one optimizer step
                batch, waited = next(batches)
                loss = self.forward_backward_step(batch)
                self.engine.step()  # DeepSpeed steps the optimizer at the accumulation boundary
                finite &= torch.isfinite(loss)
                data_s += waited
            step = self.progress.step = step + 1
            self.progress.wall_s = time.perf_counter() - start
            timer.add(self.engine.train_batch_size() * len(self.sources), data_s)
            if self.ema is not None:
                self.ema.update(self.engine.module)
            bad, save, stop = step_boundary(self.checkpointer, step, cfg.stop_after, finite)
            if bad:
                raise non_finite_error(self.checkpointer, step)
            if step % cfg.log_every == 0 or step == self.total_steps:
                self._log_train(step, lr, timer, bar)
            if cfg.eval_every and step % cfg.eval_every == 0 and step < self.total_steps:
                self._validate(step)
            if save or stop or step == self.total_steps:
                distributed.broadcast_buffers(self.engine.module)
                self.checkpointer.save(self.engine, step)
            bar.update(1)
            if stop and step < self.total_steps:
                break
        bar.close()
        return step >= self.total_steps

    def batch_generator(self) -> Iterator[tuple[Batch, float]]:
        """Micro-batches forever, each with the seconds this rank waited for it."""
        loaders = self.train_loaders[: len(self.sources)]
        streams = [_forever(loader) for loader in loaders]
        while True:
            batch, waited = [], 0.0
            for stream, loader in zip(streams, loaders, strict=True):
                images, labels, _ = next(stream)
                batch.append((images, labels))
                waited += loader.data_time
            yield batch, waited

    def forward_backward_step(self, batch: Batch) -> Tensor:
        """Forward every task's images, backward the weighted sum of the task losses; return it."""
        smoothing = self.config.train.label_smoothing
        loss = torch.zeros((), device=self.device)
        for task, (images, labels) in enumerate(batch):
            inputs = model_input(images, self.config.data, self.device, self.dtype)
            logits = self.engine(inputs, task).float()
            losses = F.cross_entropy(logits, labels, reduction="none", label_smoothing=smoothing)
            loss = loss + self.sources[task].loss_weight * losses.mean()
            self.train_metrics[task].update(logits.detach(), labels, losses.detach())
        self.engine.backward(loss)
        return loss.detach()

    def evaluate(self, task: int = 0) -> dict[str, float]:
        """Loss, top-1 and top-5 of ``task`` over its whole val split, every sample once."""
        distributed.broadcast_buffers(self.engine.module)
        self.engine.eval()
        try:
            return evaluate(
                lambda x: self.engine(x, task),
                self.val_loaders[task],
                self.val_metrics[task],
                self.device,
                self.dtype,
                self.config.data,
            )
        finally:
            self.engine.train()

    def adapt(self) -> dict[str, Any]:
        """The stage after training: adapt the target task (the last) without its labels; its
        val top-1 before and after. Not checkpointed: a resumed run repeats it."""
        from safetensors.torch import save_file

        from train.adaptation import Adapter
        from train.transfer import copy_task

        cfg, step, target = self.config.adapt, self.progress.step, len(self.sources)
        module = self.engine.module
        # The target starts from its source task as trained (logits, BN statistics, head): its
        # copy made before training stayed at the initialisation, so `before` was chance.
        copy_task(module, cfg.source_task, target)
        before = self.evaluate(target)
        adapter = Adapter(module, target, list(range(target)), cfg)
        sources = [_forever(loader) for loader in self.train_loaders[:target]]
        target_batches = _forever(self.train_loaders[target])
        history = adapter.run(sources, target_batches, self.device, self.config.data)
        after = self.evaluate(target)
        name = self.tasks[target].name
        self.logger.log({f"adapt/{name}/top1_before": before["top1"]}, step)
        self.logger.log({f"adapt/{name}/top1_after": after["top1"]}, step + cfg.steps)
        self._log_alphas(step + cfg.steps)
        if self.env.is_main:
            state = {k: v.detach().float().contiguous() for k, v in module.state_dict().items()}
            save_file(state, str(self.run_dir.adapted))
        return {
            "target": name,
            "target_top1_before": before["top1"],
            "target_top1_after": after["top1"],
            "adapt_loss": cfg.loss,
            "adapt_trained_params": adapter.trained_params(),
            "adapt_loss_first_last": [history[0], history[-1]],
        }

    def close(self, clean: bool = True) -> None:
        """Release loaders and the logger; leave the process group (see `distributed.teardown`)."""
        self.logger.close()
        for loader in self.train_loaders + self.val_loaders:
            loader.close()
        distributed.teardown(clean)
        self.lock.release()

    @property
    def interrupted_by_signal(self) -> bool:
        """True when a SIGTERM stopped the run (its checkpoint is saved)."""
        return self.checkpointer.stop_requested

    def _log_train(self, step: int, lr: float, timer: StepTimer, bar: Any) -> None:
        per_task = []
        for metrics in self.train_metrics[: len(self.sources)]:
            per_task.append(metrics.compute())
            metrics.reset()
        train, perf = task_mean(per_task), timer.window()
        epoch = step / self.steps_per_epoch
        scalars = {**self._scalars("train", per_task), **_prefixed("perf", perf)}
        self.logger.log({**scalars, "train/lr": lr, "train/epoch": epoch}, step)
        self.images_per_s.append(perf["images_per_s"])
        rate = f"{perf['images_per_s']:.0f}"
        bar.set_postfix(
            epoch=f"{epoch:.2f}", loss=f"{train['loss']:.4f}", img_s=rate, refresh=False
        )

    def _validate(self, step: int) -> list[dict[str, float]]:
        """Evaluate the trained tasks; log their scalars and every bank's alpha matrices."""
        per_task = [self.evaluate(task) for task in range(len(self.sources))]
        self.logger.log(self._scalars("val", per_task), step)
        self._log_alphas(step)
        return per_task

    def _scalars(self, section: str, per_task: list[dict[str, float]]) -> dict[str, float]:
        """The task mean as ``section/*``; with a ``tasks`` list also ``section/<task>/*``."""
        scalars = _prefixed(section, task_mean(per_task))
        if self.config.tasks:
            for task, metrics in zip(self.sources, per_task, strict=True):
                scalars.update(_prefixed(f"{section}/{task.name}", metrics))
        return scalars

    def _log_alphas(self, step: int) -> None:
        from train.models import alpha_matrices

        alphas = gathered(self.engine, alpha_matrices)
        if not alphas:
            return
        self.logger.log_alphas(alphas, step, self.config.model.mixing.coefficients)

    def _results(self, per_task: list[dict[str, float]]) -> dict[str, Any]:
        """``results.json``: the task mean as ``top1``/``top5``/``val_loss``, plus ``tasks``."""
        mc, step, mean = self.config.model, self.progress.step, task_mean(per_task)
        results: dict[str, Any] = {
            "model": mc.name,
            "variant": "independent" if self.config.multitask.independent else mc.variant,
            "mode": mc.mode,
            **method_settings(self.config),
            "params": self.params,
            "total_params": self.total_params,
            "trained_params": self.trained_params,
            "flops": self.flops,
            "top1": mean["top1"],
            "top5": mean["top5"],
            "val_loss": mean["loss"],
            "tasks": {
                task.name: {"top1": v["top1"], "top5": v["top5"], "val_loss": v["loss"]}
                for task, v in zip(self.sources, per_task, strict=True)
            },
            "images_per_s": float(np.mean(self.images_per_s)) if self.images_per_s else None,
            "steps": step,
            "epochs": step / self.steps_per_epoch,
            "world_size": self.env.world_size,
            "seed": self.config.run.seed,
            "wall_time_s": self.progress.wall_s,
        }
        if self.config.transfer.source:
            transfer = self.config.transfer
            results["transfer"] = {
                "source": transfer.source,
                "source_task": transfer.source_task,
                "mode": transfer.mode,
            }
        return results

    def _write(self, results: dict[str, Any]) -> None:
        """HParams, the alpha files, then ``results.json`` (last: it marks the run finished)."""
        from train.models import write_alpha

        final = {"hparams/top1": results["top1"], "hparams/top5": results["top5"]}
        self.logger.log_hparams(flat_dict(self.config), final)

        def write_alphas(module: torch.nn.Module) -> None:
            if self.env.is_main:
                for path in self.run_dir.alpha_files:
                    write_alpha(module, path)

        gathered(self.engine, write_alphas)  # a collective under ZeRO-3: every rank enters
        if self.env.is_main:
            self.run_dir.write_results(results)
        keys = ("top1", "trained_params", "total_params")
        self._print(json.dumps({key: results[key] for key in keys}))

    def _print(self, line: str) -> None:
        if self.env.is_main:
            print(line, flush=True)


def loader_key(config: Config, task: int) -> str:
    """The checkpoint name of task ``task``'s loader position: ``loader<t>``, or ``loader`` for a
    config without a ``tasks`` list (the name single-task checkpoints have always had)."""
    return f"loader{task}" if config.tasks else "loader"


def task_mean(per_task: list[dict[str, float]]) -> dict[str, float]:
    """The unweighted mean over tasks of each metric."""
    return {name: float(np.mean([m[name] for m in per_task])) for name in per_task[0]}


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


def _forever(loader: Any) -> Iterator[Any]:
    while True:
        yield from loader


def _progress_bar(enabled: bool, total: int, initial: int) -> Any:
    from tqdm import tqdm

    return tqdm(total=total, initial=initial, disable=not enabled, unit="step", dynamic_ncols=True)
