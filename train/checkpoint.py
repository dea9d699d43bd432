"""Sharded DeepSpeed checkpoints that appear atomically, on schedule or on request, and resume.

Layout of ``RUN/checkpoints``: one folder per checkpoint, ``stepNNNNNNNN/``, holding DeepSpeed's
shards, ``rankNNNNN.pt`` (each rank's own state: loader position, RNG states), ``trainer.pt``
(state shared by all ranks) and ``meta.json``; and ``latest``, a file naming the newest complete
folder (DeepSpeed's own convention, so its tools read it). A checkpoint is written under a
hidden ``.tmp-`` name and renamed, and ``latest`` is replaced, only after every rank has finished
writing: an interrupted save is never visible. The last ``keep`` checkpoints are kept.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from train.config import CheckpointConfig
from train.errors import BlockmixError

LATEST = "latest"
TMP_PREFIX = ".tmp-"
UNIVERSAL_PREFIX = ".universal-"
META = "meta.json"
SHARED = "trainer.pt"
REQUEST_SIGNALS = (signal.SIGUSR2, signal.SIGTERM)
# What DeepSpeed's universal-checkpoint converter requires a checkpoint to declare.
UNIVERSAL_INFO = {"universal_checkpoint_info": {"universal_checkpoint_version": 0.4}}


def tag_for(step: int) -> str:
    """The folder name of the checkpoint after optimizer step ``step``."""
    return f"step{step:08d}"


def find_latest(directory: str | Path) -> tuple[Path, dict[str, Any]] | None:
    """The newest complete checkpoint folder under ``directory`` and its meta, or None."""
    pointer = Path(directory) / LATEST
    if not pointer.is_file():
        return None
    folder = pointer.parent / pointer.read_text().strip()
    if not (folder / META).is_file():
        raise BlockmixError(f"{pointer} names {folder.name}, which is incomplete; delete {pointer}")
    return folder, json.loads((folder / META).read_text())


def needs_universal(meta: dict[str, Any], world_size: int) -> bool:
    """Whether resuming ``meta``'s checkpoint on ``world_size`` ranks goes through DeepSpeed's
    universal format (ZeRO-3 at another world size; ZeRO 0-2 reshard directly)."""
    return meta["zero_stage"] == 3 and meta["world_size"] != world_size


class RNGState:
    """Python, NumPy, torch (and CUDA) random states of this process, as a stateful."""

    def state_dict(self) -> dict[str, Any]:
        state = {
            "python": random.getstate(),
            "numpy": np.random.get_state(),
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        random.setstate(state["python"])
        np.random.set_state(state["numpy"])
        torch.set_rng_state(state["torch"])
        if "cuda" in state and torch.cuda.is_available():
            torch.cuda.set_rng_state(state["cuda"])


class Checkpointer:
    """Saves and finds checkpoints of one run; SIGUSR2/SIGTERM request a save.

    ``per_rank`` and ``shared`` map names to objects with ``state_dict``/``load_state_dict``;
    per-rank ones are saved by every rank, shared ones by rank 0.
    """

    def __init__(
        self,
        directory: str | Path,
        config: CheckpointConfig,
        per_rank: dict[str, Any],
        shared: dict[str, Any],
    ) -> None:
        self.dir = Path(directory)
        self.config = config
        self.per_rank = per_rank
        self.shared = shared
        self.requested = False
        self.stop_requested = False
        self._last_save = time.monotonic()

    def install_signal_handlers(self) -> None:
        """Make SIGUSR2 and SIGTERM request a checkpoint at the next step boundary.

        After a SIGTERM the run should stop once that checkpoint is saved (`stop_requested`).
        """
        for sig in REQUEST_SIGNALS:
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: object) -> None:
        self.requested = True
        self.stop_requested = self.stop_requested or signum == signal.SIGTERM

    def wants_save(self, step: int) -> bool:
        """This rank's wish to save after ``step``: schedule, elapsed minutes or a signal.

        Ranks must agree (a collective) before calling `save`, since saving is collective.
        """
        every, minutes = self.config.every, self.config.every_minutes
        by_steps = every > 0 and step % every == 0
        by_time = minutes > 0 and time.monotonic() - self._last_save >= 60 * minutes
        return self.requested or by_steps or by_time

    def save(self, engine: Any, step: int) -> Path:
        """Save a checkpoint on every rank (collective) and publish it; return its folder."""
        rank, world_size = dist.get_rank(), dist.get_world_size()
        tag = tag_for(step)
        tmp = self.dir / f"{TMP_PREFIX}{tag}"
        if rank == 0:
            self.dir.mkdir(parents=True, exist_ok=True)
            shutil.rmtree(tmp, ignore_errors=True)
        dist.barrier()
        engine.save_checkpoint(
            str(self.dir), tag=tmp.name, client_state=UNIVERSAL_INFO, save_latest=False
        )
        _save_file(_states(self.per_rank), tmp / f"rank{rank:05d}.pt")
        if rank == 0:
            _save_file(_states(self.shared), tmp / SHARED)
            meta = {
                "step": step,
                "world_size": world_size,
                "zero_stage": engine.zero_optimization_stage(),
            }
            _write_text(tmp / META, json.dumps(meta))
        dist.barrier()
        final = self.dir / tag
        if rank == 0:
            _fsync_tree(tmp)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            _write_text(self.dir / LATEST, tag)
            self._prune()
        dist.barrier()
        self.requested = False
        self._last_save = time.monotonic()
        return final

    def latest(self) -> tuple[Path, dict[str, Any]] | None:
        """The newest complete checkpoint folder and its meta, or None."""
        return find_latest(self.dir)

    def load(self, engine: Any, folder: Path, meta: dict[str, Any]) -> int:
        """Restore engine, per-rank and shared state from ``folder``; return its step."""
        rank, world_size = dist.get_rank(), dist.get_world_size()
        reshard = meta["world_size"] != world_size and meta["zero_stage"] in (1, 2)
        universal = needs_universal(meta, world_size)
        tag = self._to_universal(folder) if universal else folder.name
        path, _ = engine.load_checkpoint(str(self.dir), tag=tag, load_optimizer_states=not reshard)
        if path is None:
            raise BlockmixError(f"DeepSpeed could not load checkpoint {folder}")
        if reshard:
            _load_elastic_zero(engine, self.dir, folder.name)
        if universal:  # the universal format carries no buffers: take rank 0's
            _load_buffers(engine.module, folder / "zero_pp_rank_0_mp_rank_00_model_states.pt")
        source_rank = rank if rank < meta["world_size"] else 0
        _load_states(
            self.per_rank, torch.load(folder / f"rank{source_rank:05d}.pt", weights_only=False)
        )
        _load_states(self.shared, torch.load(folder / SHARED, weights_only=False))
        return int(meta["step"])

    def _to_universal(self, folder: Path) -> str:
        """Convert a ZeRO-3 checkpoint to DeepSpeed's universal format once (rank 0, collective);
        return the converted tag. The converter knows Adam-style state (AdamW, LAMB) only."""
        from deepspeed.checkpoint import ds_to_universal

        out = self.dir / f"{UNIVERSAL_PREFIX}{folder.name}"
        error = ""
        if dist.get_rank() == 0 and not (out / "zero").is_dir():
            tmp = self.dir / f"{TMP_PREFIX}{out.name}"
            shutil.rmtree(tmp, ignore_errors=True)
            args = argparse.Namespace(
                input_folder=str(folder),
                output_folder=str(tmp),
                num_extract_workers=1,
                num_merge_workers=1,
                keep_temp_folder=False,
                strict=True,
                inject_missing_state=False,
            )
            try:
                ds_to_universal.main(args)
                os.replace(tmp, out)
            except KeyError as missing:
                error = f"its optimizer state has no {missing}"
        failed = torch.tensor([int(bool(error))])
        dist.all_reduce(failed, op=dist.ReduceOp.MAX)
        if failed.item():
            raise BlockmixError(
                f"{folder} (train.zero_stage=3) cannot move to {dist.get_world_size()} ranks: "
                f"{error or 'conversion failed on rank 0'}; resume it on the world size that "
                "saved it, or train ZeRO-3 with optim.name=adamw or lamb"
            )
        return out.name

    def _prune(self) -> None:
        tags = sorted(p for p in self.dir.glob("step*") if p.is_dir())
        for old in tags[: -self.config.keep]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in [*self.dir.glob(f"{TMP_PREFIX}*"), *self.dir.glob(f"{UNIVERSAL_PREFIX}*")]:
            shutil.rmtree(stale, ignore_errors=True)


def _load_elastic_zero(engine: Any, directory: Path, tag: str) -> None:
    """Re-partition ZeRO-1/2 optimizer shards saved at another world size onto this one.

    DeepSpeed's elastic checkpoint format supports this (every rank merges all shards and takes
    its new partition), but its engine refuses a world-size change before getting there; this
    calls the same optimizer loader directly.
    """
    shards = engine._get_all_zero_checkpoints(str(directory), tag)
    if shards is None:
        raise BlockmixError(f"{directory / tag} has no ZeRO optimizer shards")
    engine.optimizer.load_state_dict(
        state_dict_list=shards,
        load_optimizer_states=True,
        load_from_fp32_weights=engine.zero_load_from_fp32_weights(),
        checkpoint_folder=None,
        load_serial=None,
        param_shapes=engine._get_zero_param_shapes(),
    )


def _load_buffers(module: torch.nn.Module, model_states: Path) -> None:
    saved = torch.load(model_states, weights_only=False)["module"]
    with torch.no_grad():
        for name, buffer in module.named_buffers():
            buffer.copy_(saved[name])


def _states(objects: dict[str, Any]) -> dict[str, Any]:
    return {name: obj.state_dict() for name, obj in objects.items()}


def _load_states(objects: dict[str, Any], states: dict[str, Any]) -> None:
    for name, obj in objects.items():
        obj.load_state_dict(states[name])


def _save_file(state: Any, path: Path) -> None:
    with open(path, "wb") as handle:
        torch.save(state, handle)
        handle.flush()
        os.fsync(handle.fileno())


def _write_text(path: Path, text: str) -> None:
    """Replace ``path`` atomically with ``text``."""
    tmp = path.with_name(f"{TMP_PREFIX}{path.name}")
    with open(tmp, "w") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            fd = os.open(path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
