"""What a search leaves behind: its MLflow run (the parent of every trial's run), the best
parameters as YAML beside the store, and trial runs whose state matches the study's.

The parent run holds what `make_tables --only search` reports: metrics `best/<metric>`,
`best/test_top1`, `default/test_top1`, `default/<metric>`, `trials/<state>` and
`importance/<param>`; tags `best.<param>`, `best_trial`, `best_eval_run`, `default_eval_run`;
the artifact `best_params.yaml`. Tags, not params, because a continued search changes them.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

import optuna
import yaml

from mae import track
from mae.sweep.plan import PlannedRun
from mae.sweep.search_files import best_params_path, write_best_params
from mae.sweep.search_study import describe_distribution, shown_url, trial_counts, trial_key

if TYPE_CHECKING:
    from mae.sweep.search import SearchPlan

log = logging.getLogger(__name__)

SEARCH_STAGE, TRIAL_STAGE = "search", "trial"


def open_parent(sp: SearchPlan, experiment_id: str) -> str:
    """The search's run (resumed on every run of the command), keyed by its Optuna study."""
    spec = sp.spec
    params = {
        "search.protocol": spec.protocol,
        "search.metric": sp.metric,
        "search.direction": spec.direction,
        "search.pretrain_key": sp.pretrain.key,
        **{f"search.space.{n}": describe_distribution(p) for n, p in spec.space.items()},
    }
    tags = {
        "study": spec.name,
        "search": spec.name,
        "scale": sp.scale.name,
        "protocol": spec.protocol,
        "pretrain_key": sp.pretrain.key,
        "optuna_study": sp.study_name,
        "optuna_storage": shown_url(sp.storage_url),
        "n_trials": spec.n_trials,
        "workers": spec.workers,
        "sampler": spec.sampler.model_dump_json(),
        "pruner": spec.pruner.model_dump_json(),
    }
    return track.open_run(
        sp.tracking_uri,
        experiment_id,
        key=f"{SEARCH_STAGE}/{sp.study_name}",
        stage=SEARCH_STAGE,
        run_name=f"{spec.name} (search)",
        params=params,
        tags=tags,
    )


def importances(study: optuna.Study) -> dict[str, float]:
    """Optuna's parameter importances (PED-ANOVA in Optuna 5) over the completed trials; {}
    when there are too few to say."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return {k: float(v) for k, v in optuna.importance.get_param_importances(study).items()}
    except (ValueError, RuntimeError) as exc:
        log.info("no parameter importances: %s", exc)
        return {}


def test_numbers(
    sp: SearchPlan, experiment_id: str, runs: Mapping[str, PlannedRun]
) -> dict[str, dict[str, Any]]:
    """Test and validation top-1 of the evaluation runs (`best`, `default`) from MLflow."""
    records = track.find_runs(sp.tracking_uri, experiment_id, [r.key for r in runs.values()])
    out: dict[str, dict[str, Any]] = {}
    for label, run in runs.items():
        record = records.get(run.key)
        metrics = track.run_metrics(sp.tracking_uri, record.run_id) if record else {}
        out[label] = {
            "run_id": record.run_id if record else None,
            "status": record.status if record else "missing",
            "test_top1": metrics.get(f"final/{sp.protocol}/top1"),
            "val_top1": metrics.get(f"final/{sp.protocol}/val_top1"),
        }
    return out


def best_record(
    sp: SearchPlan, study: optuna.Study, tests: Mapping[str, Mapping[str, Any]], weights: dict
) -> dict[str, Any]:
    """The best-params file: what `@search:<name>` reads (`params`), and where it came from."""
    best = study.best_trial
    return {
        "search": sp.spec.name,
        "scale": sp.scale.name,
        "protocol": sp.protocol,
        "params": dict(best.params),
        "best_trial": best.number,
        "best_value": best.value,
        "metric": sp.metric,
        "trials": dict(sorted(trial_counts(study).items())),
        "test_top1": {k: v["test_top1"] for k, v in tests.items()},
        "eval_runs": {k: v["run_id"] for k, v in tests.items()},
        "importances": weights,
        "pretrain_key": sp.pretrain.key,
        "optuna_study": sp.study_name,
        "storage": shown_url(sp.storage_url),
        "written": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def save_outcome(sp: SearchPlan, parent_run_id: str, record: dict[str, Any]) -> str:
    """Write the best-params YAML and put the outcome on the search's run; returns the path."""
    path = best_params_path(sp.tracking_uri, sp.scale.name, sp.spec.name)
    write_best_params(path, record)
    logger = track.MlflowLogger(sp.tracking_uri, parent_run_id)
    finished = sum(record["trials"].get(s, 0) for s in ("COMPLETE", "PRUNED"))
    metrics = {f"best/{sp.metric}": record["best_value"]}
    metrics.update({f"trials/{s.lower()}": n for s, n in record["trials"].items()})
    metrics.update({f"importance/{p}": w for p, w in record["importances"].items()})
    for label, top1 in record["test_top1"].items():
        if top1 is not None:
            metrics[f"{label}/test_top1"] = top1
    logger.log_metrics(metrics, step=finished)
    tags = {f"best.{k}": v for k, v in record["params"].items()}
    tags["best_trial"] = record["best_trial"]
    tags.update({f"{k}_eval_run": v for k, v in record["eval_runs"].items() if v})
    track.MlflowLogger(sp.tracking_uri, parent_run_id).set_tags(tags)
    logger.log_text(yaml.safe_dump(record, sort_keys=False), "best_params.yaml")
    return str(path)


def reconcile(sp: SearchPlan, study: optuna.Study, experiment_id: str, parent: str) -> int:
    """Failed trials (worker killed or stale) whose MLflow run is still RUNNING, or that were
    killed before their run was opened: a FAILED run each, so that every trial number has a run
    in its final state. Returns how many runs changed."""
    trials = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))
    failed = {trial_key(sp.study_name, t.number): t for t in trials}
    records = track.find_runs(sp.tracking_uri, experiment_id, failed)
    changed = 0
    for key, trial in failed.items():
        record = records.get(key)
        if record is not None and record.status != "RUNNING":
            continue
        if record is not None:
            run_id = record.run_id
        else:
            run_id = _failed_run(sp, trial, experiment_id, parent)
        track.MlflowLogger(sp.tracking_uri, run_id).set_tags({"trial_state": "FAIL"})
        track.finish_run(sp.tracking_uri, run_id, "FAILED")
        changed += 1
    return changed


def _failed_run(
    sp: SearchPlan, trial: optuna.trial.FrozenTrial, experiment_id: str, parent: str
) -> str:
    """The run of a trial whose worker died before it opened one."""
    return track.open_run(
        sp.tracking_uri,
        experiment_id,
        key=trial_key(sp.study_name, trial.number),
        stage=TRIAL_STAGE,
        run_name=f"{sp.spec.name}/trial{trial.number}",
        params={f"search.{k}": v for k, v in trial.params.items()},
        tags={
            "study": sp.spec.name,
            "search": sp.spec.name,
            "scale": sp.scale.name,
            "protocol": sp.protocol,
            "optuna_study": sp.study_name,
            "trial_number": trial.number,
            "error": "its worker ended before the trial's run was opened",
        },
        parent_run_id=parent,
    )
