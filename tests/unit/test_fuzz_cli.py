"""Hostile input to every `blockmix` subcommand, as a careless or unlucky user gives it.

Every case must end with exit code 2 and a message of at most three lines without a traceback,
and must leave every file that was under the run (or sweep) directory before exactly as it was.
The commands run in this process (`train.cli.main`); one tiny real training, once, gives the run
directory that the run-directory and checkpoint cases damage copies of.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path

import pytest
from sweep_fixture import write_sweep

from train.cli import main
from train.runlock import LOCK_FILE, acquire

# Lines that third-party libraries print on their first import in a process; not blockmix's.
NOISE = ("/usr/bin/ld", "collect2", "DeepSpeed", "[WARNING]", "warnings.warn", "Warning:")


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from data_pipeline.prepare.demo import prepare_demo

    root = tmp_path_factory.mktemp("fuzz-demo")
    prepare_demo(root)
    return root


@pytest.fixture(scope="module")
def trained(demo: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished 2-step run with checkpoints after steps 1 and 2."""
    run = tmp_path_factory.mktemp("fuzz-run") / "run"
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    argv = ["train", "demo", *train_args(demo, run), "checkpoint.every=1"]
    assert main(argv) == 0
    assert sorted(p.name for p in (run / "checkpoints").glob("step*")) == [
        "step00000001",
        "step00000002",
    ]
    return run


def train_args(demo: Path, run: Path) -> list[str]:
    return [f"data.root={demo}", f"run.dir={run}", "train.steps=2", "train.progress=false"]


def snapshot(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` (but the lock, which names its last holder) -> its hash."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != LOCK_FILE
    }


def refused(capsys: pytest.CaptureFixture, argv: list[str], guarded: Path | None = None) -> str:
    """Run ``blockmix ARGV``; assert exit 2, a short message, and ``guarded`` unchanged."""
    before = snapshot(guarded) if guarded is not None else {}
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.strip().splitlines() if not line.startswith(NOISE)]
    assert code == 2, (argv, err)
    assert "Traceback" not in err, err
    assert 1 <= len(lines) <= 3, lines
    assert lines[-1].startswith(f"blockmix {argv[0]}: error: "), lines
    if guarded is not None:
        after = snapshot(guarded)
        assert {k: after.get(k) for k in before} == before, argv
    return lines[-1]


def damaged_copy(trained: Path, tmp_path: Path) -> Path:
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    return run


def flip(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


# --- train: config values (refused before anything is built) -------------------------------
@pytest.mark.parametrize(
    ("override", "message"),
    [
        ("model.options.width=abc", "model.options.width='abc' is not of type int"),
        ("model.options.num_classes=5", "model.options.num_classes shadows model.num_classes"),
        ("optim.lr=nan", "optim.lr must be a finite number > 0"),
        ("optim.lr=-1", "optim.lr must be a finite number > 0"),
        ("train.steps=-5", "train.steps must be >= 0"),
        ("data.batch_size=0", "data.batch_size must be >= 1"),
        ("train.zero_stage=7", "train.zero_stage=7 is not one of"),
        ("train.stepz=3", "train.stepz"),
        ("train.steps", "is not key=value"),
        ("data.output=rgb", "data.output must be float or uint8"),
        ("checkpoint.keep=0", "checkpoint.keep must be a finite number > 0"),
    ],
)
def test_train_refuses_bad_config_values(
    capsys: pytest.CaptureFixture, tmp_path: Path, override: str, message: str
) -> None:
    argv = ["train", "demo", f"data.root={tmp_path}", f"run.dir={tmp_path / 'run'}", override]
    assert message in refused(capsys, argv)
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("_base_: demo\ntasks:\n  - {root: digits}\n  - {root: digits}\n", "two tasks are named"),
        ("model: [unclosed\n", "not valid YAML"),
        ("- a list\n", "must be a mapping"),
        ("_base_: no-such-config\n", "unknown config 'no-such-config'"),
    ],
)
def test_train_refuses_bad_config_files(
    capsys: pytest.CaptureFixture, tmp_path: Path, text: str, message: str
) -> None:
    (tmp_path / "bad.yaml").write_text(text)
    argv = ["train", str(tmp_path / "bad.yaml"), f"data.root={tmp_path}", "train.steps=1"]
    assert message in refused(capsys, argv)


# --- train: run directories -------------------------------------------------------------------
@pytest.mark.parametrize(
    ("change", "key"),
    [
        ("model.options.width=16", "model.options.width"),
        ("model.variant=tmix", "model.variant"),
        ("data.batch_size=16", "data.batch_size"),
        ("run.seed=1", "run.seed"),
    ],
)
def test_resume_with_a_meaningful_change_is_refused(
    capsys: pytest.CaptureFixture, trained: Path, demo: Path, tmp_path: Path, change: str, key: str
) -> None:
    run = damaged_copy(trained, tmp_path)
    argv = ["train", "demo", *train_args(demo, run), "train.steps=4", change]
    line = refused(capsys, argv, guarded=run)
    assert key in line and "--allow-config-change" in line


def test_a_second_run_on_a_locked_run_dir_is_refused(
    capsys: pytest.CaptureFixture, trained: Path, demo: Path, tmp_path: Path
) -> None:
    run = damaged_copy(trained, tmp_path)
    held = acquire(run, "run.dir")
    try:
        line = refused(capsys, ["train", "demo", *train_args(demo, run)], guarded=run)
    finally:
        held.release()
    assert f"is in use by pid {os.getpid()}" in line


@pytest.mark.parametrize(
    "damage",
    ["flip", "truncate", "delete-model-states", "delete-manifests", "garbage-meta"],
)
def test_no_intact_checkpoint_is_refused(
    capsys: pytest.CaptureFixture, trained: Path, demo: Path, tmp_path: Path, damage: str
) -> None:
    run = damaged_copy(trained, tmp_path)
    (run / "checkpoints" / "latest").write_text("../../../etc")
    for folder in (run / "checkpoints").glob("step*"):
        states = folder / "mp_rank_00_model_states.pt"
        if damage == "flip":
            flip(states)
        elif damage == "truncate":
            states.write_bytes(states.read_bytes()[:100])
        elif damage == "delete-model-states":
            states.unlink()
        elif damage == "delete-manifests":
            (folder / "manifest.json").unlink()
        else:
            (folder / "meta.json").write_text("{not json")
    for argv in (
        ["train", "demo", *train_args(demo, run), "train.steps=4"],
        ["export", str(run), "--out", str(tmp_path / "w.safetensors")],
    ):
        assert "no checkpoint in" in refused(capsys, argv, guarded=run)
    assert not (tmp_path / "w.safetensors").exists()


def test_a_garbage_saved_config_is_refused(
    capsys: pytest.CaptureFixture, trained: Path, demo: Path, tmp_path: Path
) -> None:
    run = damaged_copy(trained, tmp_path)
    (run / "config.yaml").write_bytes(b"\xff\xfe garbage: [")
    argv = ["train", "demo", *train_args(demo, run), "train.steps=4"]
    assert "config.yaml is unreadable" in refused(capsys, argv, guarded=run)


# --- export and eval ------------------------------------------------------------------------
class Crafted:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_export_refuses_bad_runs_and_outputs(
    capsys: pytest.CaptureFixture, trained: Path, tmp_path: Path
) -> None:
    import torch

    from train.checkpoint import _checksums, _write_manifest

    run = damaged_copy(trained, tmp_path)
    (tmp_path / "folder").mkdir()
    assert "is a folder" in refused(capsys, ["export", str(run), "--out", str(tmp_path / "folder")])
    assert "has no checkpoint" in refused(
        capsys, ["export", str(tmp_path / "folder"), "--out", str(tmp_path / "w.safetensors")]
    )
    folder = run / "checkpoints" / "step00000002"
    marker = tmp_path / "marker"
    torch.save({"module": Crafted(marker)}, folder / "mp_rank_00_model_states.pt")
    (folder / "manifest.json").unlink()
    _write_manifest(folder, _checksums(folder), 99)
    argv = ["export", str(run), "--out", str(tmp_path / "w.safetensors")]
    assert "mp_rank_00_model_states.pt is not a checkpoint file that loads safely" in refused(
        capsys, argv, guarded=run
    )
    assert not marker.exists() and not (tmp_path / "w.safetensors").exists()


def test_export_refuses_a_saved_config_that_is_not_the_runs(
    capsys: pytest.CaptureFixture, trained: Path, tmp_path: Path
) -> None:
    run = damaged_copy(trained, tmp_path)
    out = tmp_path / "w.safetensors"
    argv = ["export", str(run), "--out", str(out)]
    config = run / "config.yaml"
    text = config.read_text()
    config.write_bytes(b"\xff\xfe garbage: [")
    assert "config.yaml is damaged" in refused(capsys, argv, guarded=run)
    config.write_text(text.replace("width: 32", "width: 16", 1))
    assert "the checkpoint does not fit the model of config.yaml" in refused(
        capsys, argv, guarded=run
    )
    assert not out.exists()


@pytest.mark.parametrize("weights", ["garbage", "missing", "none"])
def test_eval_refuses_bad_weights(
    capsys: pytest.CaptureFixture, demo: Path, tmp_path: Path, weights: str
) -> None:
    path = tmp_path / "w.safetensors"
    if weights == "garbage":
        path.write_bytes(os.urandom(200))
    argv = ["eval", "demo", f"data.root={demo}"]
    argv += [] if weights == "none" else [f"weights={path}"]
    refused(capsys, argv)


# --- prepare ----------------------------------------------------------------------------------
def test_prepare_refuses_bad_trees_and_outputs(
    capsys: pytest.CaptureFixture, demo: Path, tmp_path: Path
) -> None:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    (tmp_path / "notrain").mkdir()
    (tmp_path / "list.txt").write_text("../outside.jpg 0\n")
    cases = [
        ["prepare", "index", str(tmp_path / "missing")],
        ["prepare", "index", str(tmp_path / "notrain")],
        ["prepare", "index", str(tmp_path), "--file-list", f"train={tmp_path / 'list.txt'}"],
        ["prepare", "index", str(tmp_path), "--file-list", f"train={tmp_path / 'nolist.txt'}"],
        ["prepare", "shards", str(tmp_path / "notrain"), str(tmp_path / "shards")],
        ["prepare", "shards", str(demo), str(a_file)],
        ["prepare", "demo", str(a_file)],
    ]
    for argv in cases:
        refused(capsys, argv, guarded=demo)
    assert a_file.read_text() == "x"


def test_a_shard_without_its_index_file_is_refused(
    capsys: pytest.CaptureFixture, demo: Path, tmp_path: Path
) -> None:
    shards = tmp_path / "shards"
    assert main(["prepare", "shards", str(demo), str(shards), "--shard-size", "500"]) == 0
    capsys.readouterr()
    next(shards.glob("train-*.idx")).unlink()
    assert ".idx" in refused(capsys, ["train", "demo", f"data.root={shards}", "train.steps=1"])


# --- params, submit, sweep, status, compare ---------------------------------------------------
def test_params_and_submit_refuse_bad_input(capsys: pytest.CaptureFixture, tmp_path: Path) -> None:
    refused(capsys, ["params", "no-such-model"])
    argv = ["submit", "demo", f"data.root={tmp_path}", "model.options.width=abc", "--cluster"]
    refused(capsys, [*argv, "debug"])


def test_sweep_status_and_compare_refuse_bad_sweep_dirs(
    capsys: pytest.CaptureFixture, demo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BLOCKMIX_CLUSTER_CONFIG", str(tmp_path / "cluster.yaml"))
    (tmp_path / "cluster.yaml").write_text(f"run_root: {tmp_path}\n")
    sweep_dir = tmp_path / "sweep"
    spec = write_sweep(tmp_path / "pair.yaml", demo, sweep_dir, "[0]", executor="debug")
    held = acquire(sweep_dir, "sweep directory")
    try:
        line = refused(capsys, ["sweep", str(spec)], guarded=sweep_dir)
    finally:
        held.release()
    assert f"sweep directory {sweep_dir} is in use by pid {os.getpid()}" in line
    (tmp_path / "garbage.yaml").write_text("config: [")
    refused(capsys, ["sweep", str(tmp_path / "garbage.yaml")])
    (sweep_dir / "plan.json").write_text("garbage{")
    for argv in (["status", str(sweep_dir)], ["compare", str(sweep_dir)]):
        assert "plan.json is damaged" in refused(capsys, argv, guarded=sweep_dir)
    (sweep_dir / "plan.json").write_text('{"runs": 5}')
    assert "plan.json is damaged" in refused(capsys, ["status", str(sweep_dir)])
    refused(capsys, ["status", str(tmp_path / "not-a-sweep")])


def test_compare_refuses_a_run_with_garbage_results(
    capsys: pytest.CaptureFixture, trained: Path, tmp_path: Path
) -> None:
    run = damaged_copy(trained, tmp_path)
    (run / "results.json").write_text("{bad")
    line = refused(capsys, ["compare", str(run), "--out", str(tmp_path / "c")], guarded=run)
    assert "results.json is damaged" in line
