"""One writer of the tracking concurrency tests, a process of its own: `python tracking_writer.py
URI EXPERIMENT_ID INDEX STEPS KEYS START_AT`. At START_AT (so that every writer overlaps) it does
what a job's rank 0 does through mae.track: opens its run with a full config as params, logs
KEYS metrics per step for STEPS steps (one call per step, as a job logs one epoch), its final
numbers, and closes the run FINISHED. Waits for the store as jobs do (`track.be_patient`)."""

from __future__ import annotations

import sys
import time

from mae import track
from mae.config import ExperimentConfig, flatten_config


def value(index: int, step: int, key: int) -> float:
    """What writer `index` logs for metric `key` at `step`: every number tells where it is from."""
    return index * 1_000_000 + step * 100 + key


def main(uri: str, experiment_id: str, index: int, steps: int, keys: int, start_at: float) -> None:
    track.be_patient()
    time.sleep(max(0.0, start_at - time.time()))
    run_id = track.open_run(
        uri,
        experiment_id,
        key=f"writer-{index}",
        stage="pretrain",
        run_name=f"writer {index}",
        params=flatten_config(ExperimentConfig()),
        tags={"study": "concurrency", "scale": "concurrency"},
    )
    logger = track.MlflowLogger(uri, run_id)
    for step in range(1, steps + 1):
        logger.log_metrics({f"w/m{k}": value(index, step, k) for k in range(keys)}, step)
    logger.log_final({"w/result": float(index)})
    track.finish_run(uri, run_id)


if __name__ == "__main__":
    uri, experiment_id, index, steps, keys, start_at = sys.argv[1:7]
    main(uri, experiment_id, int(index), int(steps), int(keys), float(start_at))
