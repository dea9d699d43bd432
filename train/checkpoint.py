"""Sharded DeepSpeed checkpoints that appear atomically, on schedule or on request, and resume.

Layout of ``RUN/checkpoints``: one folder per checkpoint, ``stepNNNNNNNN/``, holding DeepSpeed's
shards, ``rankNNNNN.pt`` (each rank's own state: loader position, RNG states), ``trainer.pt``
(state shared by all ranks), ``meta.json`` and ``manifest.json`` (every other file's size and
CRC-32, the checkpoint's publication number, and a checksum of the manifest itself); and
``latest``, a file naming the newest complete folder (DeepSpeed's own convention, so its tools
read it). A checkpoint is written under a hidden ``.tmp-`` name and renamed, and ``latest`` is
replaced, only after every rank has finished writing and the manifest is written: an interrupted
save is never visible. Only checkpoints whose parameters and buffers are finite are written.

Reading: the newest checkpoint (by publication) whose files match its manifest is the one used;
those that do not are named in a warning. The ``keep`` most recently published are kept.

Nothing here unpickles more than tensors and plain data: blockmix's own files hold only those,
and DeepSpeed's are read with ``weights_only=True`` and the few DeepSpeed types they need (plus
plain NumPy arrays, in older rank files).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import random
import shutil
import signal
import sys
import time
import zlib
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from train.config import CheckpointConfig
from train.errors import BlockmixError
from train.textlog import loader_position

LATEST = "latest"
TMP_PREFIX = ".tmp-"
UNIVERSAL_PREFIX = ".universal-"
META = "meta.json"
MANIFEST = "manifest.json"
SHARED = "trainer.pt"
CHUNK_BYTES = 1 << 22
FORCE_WEIGHTS_ONLY = "TORCH_FORCE_WEIGHTS_ONLY_LOAD"
REQUEST_SIGNALS = (signal.SIGUSR2, signal.SIGTERM)
# What DeepSpeed's universal-checkpoint converter requires a checkpoint to declare.
UNIVERSAL_INFO = {"universal_checkpoint_info": {"universal_checkpoint_version": 0.4}}
log = logging.getLogger(__name__)


def tag_for(step: int) -> str:
    """The folder name of the checkpoint after optimizer step ``step``."""
    return f"step{step:08d}"


def find_latest(
    directory: str | Path, checksums: bool = True
) -> tuple[Path, dict[str, Any]] | None:
    """The newest verified checkpoint folder under ``directory`` and its meta; None when there is
    no checkpoint at all.

    The folder ``latest`` names is tried first, then the others, newest publication first; one
    whose files do not match its manifest is named in a warning and the next one is tried. When
    ``latest`` is missing or wrong, the folders beside it still count. Collective when the process group
    is up (every rank checks a share of the files); raises when checkpoints exist but none
    verifies. ``checksums=False`` checks manifests, file lists and sizes only (a quick look).
    """
    directory = Path(directory)
    folders = _published(directory)
    for folder in folders:
        problem = _agree(verify(folder, *_stripe(), checksums=checksums))
        if problem is None:
            _warn_if_latest_differs(directory, folder)
            return folder, json.loads((folder / META).read_text())
        _warn(f"checkpoint {folder} is damaged ({problem}); trying the previous one")
    if folders:
        raise BlockmixError(
            f"no checkpoint in {directory} matches its manifest (see the warnings above); "
            "restore the files, or move the folder away to start the run over"
        )
    return None


def verify(folder: Path, share: int = 0, shares: int = 1, checksums: bool = True) -> str | None:
    """None when ``folder`` matches its manifest, else what is wrong (a short phrase).

    ``share`` of ``shares`` checks only every ``shares``-th file's size and checksum (ranks
    split the reading); the manifest itself and the list of files are always checked.
    """
    try:
        manifest = read_manifest(folder)
    except BlockmixError as error:
        if _predates_manifests(folder):
            _warn(f"checkpoint {folder} predates checkpoint manifests: its files are not verified")
            return None
        return str(error)
    entries = sorted(manifest["files"].items())
    for name, entry in entries:
        path = folder / name
        if Path(name).is_absolute() or ".." in Path(name).parts or not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != entry["size"]:
            return f"{name} has {path.stat().st_size} bytes, the manifest says {entry['size']}"
    mine = [(name, entry) for i, (name, entry) in enumerate(entries) if i % shares == share]
    sums = _parallel_checksums([folder / name for name, _ in mine]) if checksums else []
    for (name, entry), crc in zip(mine, sums, strict=False):
        if crc != entry["crc32"]:
            return f"{name} does not match its checksum"
    return None


def read_manifest(folder: Path) -> dict[str, Any]:
    """The manifest of ``folder``, its own checksum checked; a `BlockmixError` if unusable."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text())
        body = {key: value for key, value in manifest.items() if key != "checksum"}
        if manifest["checksum"] != _text_checksum(_canonical(body)):
            raise ValueError
        files, publication = manifest["files"], manifest["publication"]
        if not isinstance(files, dict) or not isinstance(publication, int) or META not in files:
            raise ValueError
        for entry in files.values():
            if not isinstance(entry["size"], int) or not isinstance(entry["crc32"], str):
                raise ValueError
    except FileNotFoundError:
        raise BlockmixError(f"it has no {MANIFEST}") from None
    except (OSError, ValueError, KeyError, TypeError):
        raise BlockmixError(f"its {MANIFEST} is damaged") from None
    return manifest


def _predates_manifests(folder: Path) -> bool:
    """Whether ``folder`` is a checkpoint of a blockmix that wrote no manifest: no manifest file,
    and a ``meta.json`` without the ``manifest`` key every later checkpoint's meta has (so a
    deleted manifest of a newer checkpoint still counts as damage)."""
    if (folder / MANIFEST).exists():
        return False
    try:
        meta = json.loads((folder / META).read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "manifest" not in meta and isinstance(meta.get("step"), int)


def file_checksum(path: Path) -> str:
    """CRC-32 of a file as 8 hex digits, read in 4 MiB chunks (several GB/s)."""
    crc = 0
    with open(path, "rb") as handle:
        while chunk := handle.read(CHUNK_BYTES):
            crc = zlib.crc32(chunk, crc)
    return f"{crc:08x}"


def needs_universal(meta: dict[str, Any], world_size: int) -> bool:
    """Whether resuming ``meta``'s checkpoint on ``world_size`` ranks goes through DeepSpeed's
    universal format (ZeRO-3 at another world size; ZeRO 0-2 reshard directly)."""
    return meta["zero_stage"] == 3 and meta["world_size"] != world_size


class RNGState:
    """Python, NumPy, torch (and CUDA) random states of this process, as a stateful.

    The state holds tensors and plain lists only, so that ``torch.load(weights_only=True)``
    reads it.
    """

    def state_dict(self) -> dict[str, Any]:
        version, words, gauss = random.getstate()
        kind, key, pos, has_gauss, cached = np.random.get_state()
        state = {
            "python": [version, list(words), gauss],
            "numpy": [kind, torch.from_numpy(key.astype(np.int64)), pos, has_gauss, cached],
            "torch": torch.get_rng_state(),
        }
        if torch.cuda.is_available():
            state["cuda"] = torch.cuda.get_rng_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        version, words, gauss = state["python"]
        random.setstate((version, tuple(words), gauss))
        kind, key, pos, has_gauss, cached = state["numpy"]  # key: a tensor, or an older array
        np.random.set_state((kind, np.asarray(key).astype(np.uint32), pos, has_gauss, cached))
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
        """Save a checkpoint on every rank (collective) and publish it; return its folder.

        Raises a `BlockmixError` instead when a parameter or buffer is not finite: such a
        checkpoint is never written, and the last good one stays published.
        """
        rank, world_size = dist.get_rank(), dist.get_world_size()
        if _agree(None if _finite(engine.module) else "not finite") is not None:
            raise BlockmixError(
                f"parameters or buffers are not finite after step {step}; stopping "
                f"({_kept(self.dir)})"
            )
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
                "manifest": MANIFEST,
            }
            _write_text(tmp / META, json.dumps(meta))
        dist.barrier()
        files = _checksums(tmp)
        final = self.dir / tag
        if rank == 0:
            _write_manifest(tmp, files, _next_publication(self.dir))
            _fsync_tree(tmp)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            _write_text(self.dir / LATEST, tag)
            self._prune()
            log.info("saved checkpoint %s (step %d)", final, step)
        dist.barrier()
        self.requested = False
        self._last_save = time.monotonic()
        return final

    def latest(self) -> tuple[Path, dict[str, Any]] | None:
        """The newest verified checkpoint folder and its meta, or None (see `find_latest`)."""
        return find_latest(self.dir)

    def load(self, engine: Any, folder: Path, meta: dict[str, Any]) -> int:
        """Restore engine, per-rank and shared state from ``folder``; return its step.

        Every ``.pt`` file is first parsed with ``weights_only=True`` (a crafted pickle is a
        one-line error naming it) before DeepSpeed reads the same, verified bytes.
        """
        rank, world_size = dist.get_rank(), dist.get_world_size()
        reshard = meta["world_size"] != world_size and meta["zero_stage"] in (1, 2)
        universal = needs_universal(meta, world_size)
        check_loads_safely(folder)  # DeepSpeed then reads these same verified bytes
        if universal:
            with weights_only_loads(folder):
                tag = self._to_universal(folder)
        else:
            tag = folder.name
        path, _ = engine.load_checkpoint(str(self.dir), tag=tag, load_optimizer_states=not reshard)
        if path is None:
            raise BlockmixError(f"DeepSpeed could not load checkpoint {folder}")
        if reshard:
            _load_elastic_zero(engine, self.dir, folder.name)
        if universal:  # the universal format carries no buffers: take rank 0's
            _load_buffers(engine.module, folder / "zero_pp_rank_0_mp_rank_00_model_states.pt")
        source_rank = rank if rank < meta["world_size"] else 0
        _load_states(self.per_rank, load_safely(folder / f"rank{source_rank:05d}.pt"))
        _load_states(self.shared, load_safely(folder / SHARED))
        log.info(
            "resumed from %s: step %d, %s", folder, meta["step"], loader_position(self.per_rank)
        )
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
        """Keep the ``keep`` most recently published checkpoints (the one just published is the
        newest); folders without a readable manifest count as the oldest."""
        for old in _by_publication(self.dir)[: -self.config.keep]:
            shutil.rmtree(old, ignore_errors=True)
        for stale in [*self.dir.glob(f"{TMP_PREFIX}*"), *self.dir.glob(f"{UNIVERSAL_PREFIX}*")]:
            shutil.rmtree(stale, ignore_errors=True)


def load_safely(path: Path, mmap: bool = False) -> Any:
    """``torch.load`` of a checkpoint file with ``weights_only=True`` (tensors, plain data and the
    few DeepSpeed and NumPy types checkpoints need); anything else is a `BlockmixError` naming
    the file."""
    try:
        with torch.serialization.safe_globals(_checkpoint_globals()):
            return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except FileNotFoundError:
        raise BlockmixError(f"{path} is missing") from None
    except Exception as error:  # any file that does not load is the file's fault
        first = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise BlockmixError(
            f"{path} is not a checkpoint file that loads safely ({first[:160]}); "
            "it may be damaged or crafted: do not load it"
        ) from None


def check_loads_safely(folder: Path) -> None:
    """Raise a `BlockmixError` naming the first ``.pt`` file in ``folder`` that holds more than
    tensors and plain data (its pickle is parsed, its tensors are not read)."""
    for path in sorted(folder.rglob("*.pt")):
        load_safely(path, mmap=True)


@contextlib.contextmanager
def weights_only_loads(folder: Path) -> Iterator[None]:
    """Make every ``torch.load`` inside (DeepSpeed's included) use ``weights_only=True`` with the
    checkpoint types allowed (`_checkpoint_globals`); a file needing more is a `BlockmixError`
    naming ``folder``."""
    import pickle

    previous = os.environ.get(FORCE_WEIGHTS_ONLY)
    os.environ[FORCE_WEIGHTS_ONLY] = "1"
    try:
        with torch.serialization.safe_globals(_checkpoint_globals()):
            yield
    except pickle.UnpicklingError as error:
        first = (str(error).strip().splitlines() or ["unpickling failed"])[0]
        raise BlockmixError(
            f"{folder} holds a file that needs more than tensors to load ({first[:160]}); "
            "do not load it"
        ) from None
    finally:
        if previous is None:
            os.environ.pop(FORCE_WEIGHTS_ONLY, None)
        else:
            os.environ[FORCE_WEIGHTS_ONLY] = previous


def _checkpoint_globals() -> list[Any]:
    """The types checkpoint files hold besides tensors and plain data: DeepSpeed's, and NumPy
    arrays (data only: an object array would need its elements' types too), which hold the NumPy
    RNG state in the rank files of checkpoints that predate manifests."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    numpy = [np._core.multiarray._reconstruct, np.ndarray, np.dtype, type(np.dtype(np.uint32))]
    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address, *numpy]


def _published(directory: Path) -> list[Path]:
    """Checkpoint folders in the order to try them: the one ``latest`` names, then the others,
    most recently published first."""
    folders = _by_publication(directory)[::-1]
    named = [folder for folder in folders if folder.name == _latest_name(directory)]
    return named + [folder for folder in folders if folder not in named]


def _latest_name(directory: Path) -> str | None:
    try:
        return (directory / LATEST).read_text().strip()
    except (OSError, UnicodeDecodeError):
        return None


def _by_publication(directory: Path) -> list[Path]:
    """Checkpoint folders, oldest publication first (unreadable manifests first of all)."""

    def order(folder: Path) -> tuple[int, str]:
        return _publication(folder), folder.name

    return sorted((p for p in directory.glob("step*") if p.is_dir()), key=order)


def _publication(folder: Path) -> int:
    try:
        return int(read_manifest(folder)["publication"])
    except BlockmixError:
        return -1


def _next_publication(directory: Path) -> int:
    folders = [p for p in directory.glob("step*") if p.is_dir()]
    return 1 + max((_publication(p) for p in folders), default=0)


def _checksums(folder: Path) -> dict[str, dict[str, Any]]:
    """Size and CRC-32 of every file in ``folder``, each rank reading a share (collective)."""
    names = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
    share, shares = _stripe()
    names = [name for i, name in enumerate(names) if i % shares == share]
    sums = _parallel_checksums([folder / name for name in names])
    mine = {
        name: {"size": (folder / name).stat().st_size, "crc32": crc}
        for name, crc in zip(names, sums, strict=True)
    }
    if shares == 1:
        return mine
    parts: list[Any] = [None] * shares
    dist.all_gather_object(parts, mine)
    return {name: entry for part in parts for name, entry in part.items()}


def _parallel_checksums(paths: list[Path]) -> list[str]:
    """`file_checksum` of each path, files read in parallel threads (zlib and file reads release
    the GIL)."""
    if len(paths) < 2:
        return [file_checksum(path) for path in paths]
    with ThreadPoolExecutor(min(len(paths), os.cpu_count() or 1, 8)) as pool:
        return list(pool.map(file_checksum, paths))


def _write_manifest(folder: Path, files: dict[str, Any], publication: int) -> None:
    body = {"publication": publication, "published_at": time.time(), "files": files}
    manifest = {**body, "checksum": _text_checksum(_canonical(body))}
    _write_text(folder / MANIFEST, json.dumps(manifest, indent=1, sort_keys=True))


def _canonical(body: dict[str, Any]) -> str:
    return json.dumps(body, sort_keys=True, separators=(",", ":"))


def _text_checksum(text: str) -> str:
    return f"{zlib.crc32(text.encode()):08x}"


def _stripe() -> tuple[int, int]:
    """(this rank, world size) when the process group is up, else (0, 1)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _agree(problem: str | None) -> str | None:
    """A problem any rank found (the lowest rank's wording), or None; collective when the
    process group is up."""
    shares = _stripe()[1]
    if shares == 1:
        return problem
    found: list[Any] = [None] * shares
    dist.all_gather_object(found, problem)
    return next((p for p in found if p is not None), None)


def _finite(module: torch.nn.Module) -> bool:
    """Whether this rank's parameters (ZeRO-3: its partitions) and buffers are all finite."""
    tensors = [getattr(p, "ds_tensor", p) for p in module.parameters()]
    tensors += list(module.buffers())
    return all(bool(torch.isfinite(t).all()) for t in tensors if t.is_floating_point())


def _kept(directory: Path) -> str:
    latest = find_latest(directory)
    return f"the last good checkpoint is {latest[0]}" if latest else "no checkpoint was saved yet"


def _warn(message: str) -> None:
    if _stripe()[0] == 0:
        print(f"blockmix: warning: {message}", file=sys.stderr, flush=True)


def _warn_if_latest_differs(directory: Path, folder: Path) -> None:
    pointer, named = directory / LATEST, _latest_name(directory)
    if named != folder.name:
        what = f"names {named!r}" if named is not None else "is missing or unreadable"
        _warn(f"{pointer} {what}; resuming from {folder.name}, the newest verified checkpoint")


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
    saved = load_safely(model_states)["module"]
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
