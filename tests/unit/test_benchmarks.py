"""Every benchmark runs at its smallest size (so none of them rots), and the step benchmark's FLOP
count agrees with the paper. No timing is asserted: this machine's speed is not the code's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from benchmarks.__main__ import PARTS, main
from benchmarks.common import LoadProbe
from benchmarks.step import counted_flops, experiment, ours

ROOT = Path(__file__).resolve().parents[2]
# Parts that start fresh Python processes (imports of torch and MLflow each): seconds, not less.
SPAWNING = {"startup", "sweep", "e2e"}


@pytest.mark.parametrize(
    "part", [pytest.param(p, marks=pytest.mark.slow) if p in SPAWNING else p for p in PARTS]
)
def test_each_part_runs_at_its_smallest_size(part: str, tmp_path: Path, capsys) -> None:
    if part in ("step", "asymmetry", "choices", "profile"):
        pytest.importorskip("transformers")
    assert main(["--smallest", "--only", part, "--out", str(tmp_path)]) == 0
    rows = json.loads((tmp_path / f"{part}.json").read_text())
    assert rows["rows"] and rows["load"]["wall_s"] > 0
    if part == "tracking":  # the logger's own calls are clocked: a real share of a run, not all
        assert 0 < rows["rows"][0]["inside_logger_wall"] < 0.5
    report = (tmp_path / "report.md").read_text()
    assert "Load: " in report and "| " in report
    assert "# mae-ablate benchmarks" in capsys.readouterr().out


def test_counted_flop_ratio_of_mask_tokens_matches_table_1c() -> None:
    """Paper: an encoder with mask tokens costs 3.3x the FLOPs (ViT-L/16, 512x8 decoder, 75%).
    Counted on the meta device: shapes only, no memory, no arithmetic."""
    flops = []
    for mask_tokens in (False, True):
        with torch.device("meta"):
            contender = ours("x", experiment("vit_l16", mask_tokens))
            images = torch.empty(1, 3, 224, 224)
        flops.append(counted_flops(contender, images))
    assert flops[1] / flops[0] == pytest.approx(3.3, abs=0.1)


def test_load_probe_sees_another_process_use_the_cpu() -> None:
    with LoadProbe() as idle:
        pass
    with LoadProbe() as busy:
        subprocess.run(["python3", "-c", "sum(range(30_000_000))"], check=True)
    assert busy.load.own_cpu_s > 0.1  # a waited-for child counts as our own work
    assert idle.load.other_cpu_s >= 0 and "load average" in busy.load.line()


def test_gpu_check_dry_run_on_the_cpu() -> None:
    """The GPU script's dry mode: the same commands at the micro config on the CPU."""
    pytest.importorskip("transformers")
    out = subprocess.run(
        ["bash", "benchmarks/gpu_check.sh", "--dry"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHON": sys.executable},
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "MFU" in out.stdout
