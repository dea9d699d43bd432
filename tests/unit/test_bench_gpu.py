"""`make bench-gpu` on the CPU with tiny sizes: it runs end to end on model code alone."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

BENCHMARKS = Path(__file__).parents[1] / "benchmarks"

#: runs the benchmark in a fresh interpreter, then names what it imported that a GPU machine
#: without DALI, DeepSpeed and OmegaConf would lack
SCRIPT = """
import sys
sys.path.insert(0, {folder!r})
import bench_gpu
code = bench_gpu.main({argv!r})
heavy = sorted(m for m in sys.modules if m.split(".")[0] in ("deepspeed", "omegaconf", "nvidia"))
print("heavy imports:", heavy)
sys.exit(code)
"""


def run_bench(*argv: str) -> str:
    script = SCRIPT.format(folder=str(BENCHMARKS), argv=list(argv))
    done = subprocess.run(
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=600,
        env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"},
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout


def test_tiny_cpu_run_reports_every_pair_and_ratios_last() -> None:
    out = run_bench(
        "--cpu", "--models", "isometric", "--compile-backend", "eager", "--no-deepspeed"
    )
    lines = out.splitlines()
    assert lines[-1] == "heavy imports: []"
    for tag in ("eager", "compile(eager)"):
        for side in ("baseline", "tmix deeper", "tmix compact"):
            assert any(f"isometric    {side:<13} {tag:<18} batch 2" in line for line in lines), out
    start = lines.index(next(line for line in lines if line.startswith("ratios")))
    ratios = lines[start + 1 : -1]
    assert len(ratios) == 4 and all("tmix/baseline img/s" in line for line in ratios), out
    assert all(" img/s (IQR " in line for line in lines[:start] if "batch 2" in line)
