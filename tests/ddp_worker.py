"""One process of the DDP tests (tests/integration/test_ddp.py), started alone or by torchrun:
`python ddp_worker.py PLAN.json`. The plan names a config, where to pre-train, which encoder the
evaluations read and which stages run (each with an optional `stop_after_epoch`). Every rank
writes `result<rank>.json` in the plan's `out` folder: each stage's returned numbers and, from
rank 0's logger, its per-epoch metrics."""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from support import RecordingLogger

from mae.config import validate_config
from mae.evaluate import run_eval
from mae.train.pretrain import pretrain


def main(plan_file: str) -> None:
    torch.set_num_threads(1)
    plan = json.loads(Path(plan_file).read_text())
    cfg = validate_config(plan["config"], source=plan_file)
    out = Path(plan["out"])
    results: dict[str, dict] = {}
    for step in plan["steps"]:
        logger = RecordingLogger()
        name, stage, workdir = step["name"], step["stage"], Path(step["workdir"])
        stop = step.get("stop_after_epoch")
        if stage == "pretrain":
            numbers = pretrain(cfg, workdir, logger, stop)
        else:
            numbers = run_eval(stage, cfg, Path(plan["encoder"]), workdir, logger, stop)
        results[name] = {"result": numbers, "metrics": logger.metrics}
    rank = os.environ.get("RANK", "0")
    out.mkdir(parents=True, exist_ok=True)
    (out / f"result{rank}.json").write_text(json.dumps(results))


if __name__ == "__main__":
    main(sys.argv[1])
