"""`blockmix sweep` on the local two-node SLURM cluster: one baseline x one seed -> a report."""

from __future__ import annotations

import csv
import json

from train.cli import main

STEPS = "{train.steps: 6, train.epochs: 0, train.log_every: 2, train.progress: false}"


def test_sweep_of_one_baseline_and_seed_produces_a_report(slurm_cluster, tmp_path, monkeypatch):
    from data_pipeline.prepare.demo import prepare_demo

    prepare_demo(tmp_path / "demo")
    (tmp_path / "cluster.yaml").write_text(f"run_root: {tmp_path}\n")
    monkeypatch.setenv("BLOCKMIX_CLUSTER_CONFIG", str(tmp_path / "cluster.yaml"))
    overrides = STEPS.replace("{", "{data.root: " + str(tmp_path / "demo") + ", ")
    sweep_file = tmp_path / "one.yaml"
    sweep_file.write_text(
        "config: demo\nmodes: [deeper]\nseeds: [0]\ndir: sweeps/one\n"
        f"overrides: {overrides}\ncluster: {{executor: slurm, partition: debug, time_min: 10}}\n"
    )
    assert main(["sweep", str(sweep_file), "--wait"]) == 0
    sweep_dir = tmp_path / "sweeps" / "one"
    jobs = json.loads((sweep_dir / "jobs.json").read_text())
    array_ids = {job["job_id"].split("_")[0] for job in jobs.values()}
    assert len(jobs) == 2 and len(array_ids) == 1  # one job array for the pair
    assert main(["compare", str(sweep_dir)]) == 0
    lines = list(csv.DictReader((sweep_dir / "compare.csv").open()))
    assert [(line["variant"], line["runs"]) for line in lines] == [
        ("baseline", "1 finished"),
        ("tmix deeper", "1 finished"),
    ]
    assert lines[1]["paired_n"] == "1" and lines[1]["top1_diff"] != ""
    assert (sweep_dir / "compare.png").stat().st_size > 0
    assert main(["sweep", str(sweep_file)]) == 0  # everything finished: nothing to submit
    assert json.loads((sweep_dir / "jobs.json").read_text()) == jobs
