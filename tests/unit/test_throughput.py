"""The throughput benchmark: its FLOP model against the paper, and one tiny end-to-end run."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path

import pytest

from mae.config import validate_config

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "throughput.py"


@pytest.fixture(scope="module")
def throughput():
    spec = importlib.util.spec_from_file_location("throughput", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up there
    spec.loader.exec_module(module)
    yield module
    del sys.modules[spec.name]


def test_flop_ratio_matches_table_1c(throughput) -> None:
    """Paper: an encoder with mask tokens costs 3.3x the FLOPs (ViT-L/16, 512x8 decoder, 75%)."""
    cfg = validate_config(
        {
            "model": {"preset": "vit_l16"},
            "data": {"dataset": "imagefolder", "image_size": 224, "channels": 3},
        }
    )
    ratio = throughput.forward_flops(cfg, True) / throughput.forward_flops(cfg, False)
    assert ratio == pytest.approx(3.3, abs=0.1)


def test_tiny_run_writes_rows(throughput, tmp_path: Path, capsys) -> None:
    pytest.importorskip("transformers")
    out = tmp_path / "rows.json"
    args = ["--configs", "tiny", "--batch", "2", "--steps", "1", "--reps", "1", "--warmup", "0"]
    assert throughput.main([*args, "--threads", "1", "--json", str(out)]) == 0
    rows = json.loads(out.read_text())
    rates = {r["contender"]: r["images_per_s"] for r in rows if "images_per_s" in r}
    assert set(rates) == {"ours", "hf", "ours w/ [M]"} and all(v > 0 for v in rates.values())
    speed = next(r for r in rows if "measured" in r)
    assert speed["measured"] == pytest.approx(rates["ours"] / rates["ours w/ [M]"])
    assert "| tiny" in capsys.readouterr().out
