"""A real `tensorboard` server over a short real run serves its scalars, alpha pictures,
histograms and HParams session (routes as in tensorboard's scalar, image, histogram and hparams
plugins)."""

from __future__ import annotations

import io
import json
import os
import re
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from PIL import Image

BIN = Path(sys.executable).parent


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def get(url: str, body: dict | None = None) -> bytes:
    data = None if body is None else json.dumps(body).encode()
    headers = {"Content-Type": "application/json"} if body is not None else {}
    with urllib.request.urlopen(urllib.request.Request(url, data, headers), timeout=30) as reply:
        return reply.read()


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A 4-step tmix run of the demo config (evaluated at steps 2 and 4) on the demo digits."""
    env = dict(os.environ, DS_ACCELERATOR="cpu", OMP_NUM_THREADS="1")
    data, run = tmp_path_factory.mktemp("demo"), tmp_path_factory.mktemp("runs") / "tb-run"
    for args in (
        ["prepare", "demo", str(data)],
        ["train", "demo", f"data.root={data}", f"run.dir={run}", "model.variant=tmix",
         "train.steps=4", "train.log_every=2", "train.eval_every=2", "train.progress=false",
         "checkpoint.every=0"],
    ):  # fmt: skip
        proc = subprocess.run([BIN / "blockmix", *args], capture_output=True, text=True, env=env)
        assert proc.returncode == 0, f"blockmix {args[0]}: {proc.stderr[-3000:]}"
    return run


@pytest.fixture(scope="module")
def server(run: Path) -> Iterator[str]:
    """`tensorboard --logdir RUN` on a free port of 127.0.0.1, once it has loaded the run."""
    port = free_port()
    command = [
        BIN / "tensorboard",
        "--logdir",
        str(run),
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, process.stdout.read().decode()[-3000:]
            assert time.monotonic() < deadline, "tensorboard did not serve the run in 120 s"
            try:
                if json.loads(get(f"{url}/data/plugin/scalars/tags")).get("tb"):
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            time.sleep(0.5)
        yield url
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def test_scalars_are_served(server: str) -> None:
    tags = json.loads(get(f"{server}/data/plugin/scalars/tags"))["tb"]
    assert {"train/loss", "train/lr", "val/top1", "perf/images_per_s"} <= set(tags)


def test_alpha_images_and_histograms_are_served(server: str) -> None:
    images = json.loads(get(f"{server}/data/plugin/images/tags"))["tb"]
    per_bank = sorted(tag for tag in images if re.fullmatch(r"alpha/task\d+/.+", tag))
    assert per_bank == ["alpha/task0/stages.0.bank"] and "alpha/tasks" in images
    histograms = json.loads(get(f"{server}/data/plugin/histograms/tags"))["tb"]
    assert sorted(histograms) == [tag.replace("alpha/", "alpha_hist/") for tag in per_bank]
    for tag in (per_bank[0], "alpha/tasks"):
        samples = json.loads(get(f"{server}/data/plugin/images/images?run=tb&tag={tag}"))
        assert [s["step"] for s in samples] == [2, 4]
        png = get(f"{server}/data/plugin/images/individualImage?{samples[-1]['query']}")
        with Image.open(io.BytesIO(png)) as image:
            assert image.format == "PNG" and min(image.size) > 100


def test_hparams_session_is_served(server: str, run: Path) -> None:
    experiment = json.loads(get(f"{server}/data/plugin/hparams/experiment", {}))
    names = {info["name"] for info in experiment["hparamInfos"]}
    assert {"model.name", "model.variant", "optim.lr"} <= names
    metrics = {info["name"]["tag"] for info in experiment["metricInfos"]}
    assert {"hparams/top1", "hparams/top5"} <= metrics
    statuses = ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE", "STATUS_RUNNING"]
    request = {"startIndex": 0, "sliceSize": 10, "allowedStatuses": statuses}
    groups = json.loads(get(f"{server}/data/plugin/hparams/session_groups", request))
    (group,) = groups["sessionGroups"]
    assert group["hparams"]["model.variant"] == "tmix"
    values = {m["name"]["tag"]: m["value"] for m in group["sessions"][0]["metricValues"]}
    top1 = json.loads((run / "results.json").read_text())["top1"]
    assert values["hparams/top1"] == pytest.approx(top1)
