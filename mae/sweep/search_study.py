"""The Optuna side of a search: its storage, sampler and pruner built from the search file, the
study's name, the search space as Optuna distributions, and counts of trials by state.

Storages: SQLite beside the MLflow store by default, a journal file (many processes on one host,
or NFS), or a database URL (PostgreSQL/MySQL for many nodes). Every RDB storage, SQLite included,
records heartbeats: a trial whose worker died is failed after the grace period and retried from
its checkpoint (`RetryHeartbeatStaleTrialCallback`); journal files have no heartbeats.
"""

from __future__ import annotations

import hashlib
import time
import warnings
from collections import Counter
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import sqlalchemy
from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.storages import JournalStorage, RDBStorage, RetryHeartbeatStaleTrialCallback
from optuna.storages.journal import JournalFileBackend
from optuna.trial import TrialState

from mae.config import canonical_json
from mae.paths import sqlite_path
from mae.sweep.search_files import OPTUNA_DB, OPTUNA_JOURNAL, beside_store
from mae.sweep.search_spec import Choices, Heartbeat, Pruner, Range, Sampler, grid_values

JOURNAL = "journal:"
FINISHED = (TrialState.COMPLETE, TrialState.PRUNED)
SCHEMA_ATTEMPTS = 3  # opening a new RDB storage while another process creates its schema
SQLITE_TIMEOUT_S = 60  # workers writing one SQLite file wait for each other's locks this long


def storage_url(storage: str | None, tracking_uri: str) -> str:
    """The search file's `storage` as a URL: SQLite beside the MLflow store by default,
    `journal:<absolute path>` for journal files."""
    if storage is None:
        return f"sqlite:///{beside_store(tracking_uri) / OPTUNA_DB}"
    if storage == "journal":
        return f"{JOURNAL}{beside_store(tracking_uri) / OPTUNA_JOURNAL}"
    if storage.startswith(JOURNAL):
        path = Path(storage.removeprefix(JOURNAL)).expanduser()
        return f"{JOURNAL}{path if path.is_absolute() else Path.cwd() / path}"
    return storage


def shown_url(url: str) -> str:
    """The URL without its password, for logs, MLflow params and the dry run."""
    scheme, sep, rest = url.partition("://")
    credentials, at, host = rest.rpartition("@")
    if not sep or not at or ":" not in credentials:
        return url
    return f"{scheme}://{credentials.split(':', 1)[0]}:***@{host}"


def dashboard_target(url: str) -> str:
    """What `optuna-dashboard` takes for this storage: the URL, or a journal file's path."""
    return url.removeprefix(JOURNAL)


def has_heartbeat(url: str) -> bool:
    return not url.startswith(JOURNAL)


def storage_exists(url: str) -> bool:
    """False for a SQLite or journal file not created yet (reading must not create it)."""
    if url.startswith(JOURNAL):
        return Path(url.removeprefix(JOURNAL)).exists()
    db = sqlite_path(url)
    return db is None or db.exists()


def build_storage(url: str, heartbeat: Heartbeat) -> optuna.storages.BaseStorage:
    if url.startswith(JOURNAL):
        return JournalStorage(JournalFileBackend(url.removeprefix(JOURNAL)))
    engine = {"connect_args": {"timeout": SQLITE_TIMEOUT_S}} if url.startswith("sqlite") else {}
    with warnings.catch_warnings():  # heartbeats are experimental in Optuna
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        for _ in range(SCHEMA_ATTEMPTS - 1):
            try:
                return _rdb_storage(url, engine, heartbeat)
            except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.OperationalError):
                # Another process (a worker, the dashboard) created the schema at the same
                # moment: Optuna checks for the tables, then creates them, and the slower one
                # fails. A later look finds them (one look at once was not always late enough).
                time.sleep(0.5)
        return _rdb_storage(url, engine, heartbeat)


def _rdb_storage(url: str, engine: dict[str, Any], heartbeat: Heartbeat) -> RDBStorage:
    return RDBStorage(
        url,
        engine_kwargs=engine,
        heartbeat_interval=heartbeat.interval,
        grace_period=heartbeat.grace,
        heartbeat_stale_trial_callback=retry_callback(heartbeat),
    )


def retry_callback(heartbeat: Heartbeat) -> RetryHeartbeatStaleTrialCallback:
    """Re-enqueue a failed trial with its parameters and intermediate values, at most
    `max_retry` times; the retry resumes the original trial's checkpoint."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        return RetryHeartbeatStaleTrialCallback(
            max_retry=heartbeat.max_retry, inherit_intermediate_values=True
        )


def fail_and_retry(study: optuna.Study, number: int, heartbeat: Heartbeat) -> None:
    """Fail a RUNNING trial whose worker is gone and enqueue its retry (as heartbeats would)."""
    study.tell(number, state=TrialState.FAIL)
    frozen = next(t for t in study.get_trials(deepcopy=False) if t.number == number)
    retry_callback(heartbeat)(study, frozen)


def study_name(search: str, scale: str, identity: Mapping[str, Any]) -> str:
    """`<search>/<scale>/<hash>`: one Optuna study per pre-training, protocol, fixed recipe,
    space and objective. Sampler, pruner, trial and worker counts may change between runs of
    the command; a change of the others starts a new study beside the old one."""
    digest = hashlib.sha256(canonical_json(identity).encode()).hexdigest()
    return f"{search}/{scale}/{digest[:10]}"


def trial_key(study: str, number: int) -> str:
    """The content-key tag of a trial's MLflow run (no planned run has such a key)."""
    return f"trial/{study}/{number}"


def worker_seed(seed: int, *salt: int) -> int:
    """A sampler seed per worker and launch: workers that shared one seed would propose the same
    random start-up points, and so would a second launch of the same worker index."""
    return int(np.random.SeedSequence([seed, *salt]).generate_state(1)[0])


def build_sampler(
    sampler: Sampler, space: Mapping[str, Range | Choices], seed: int
) -> optuna.samplers.BaseSampler:
    """TPE (Optuna 5: multivariate with a constant liar for parallel workers), random, or a grid.
    A grid uses the search's own seed in every worker, so that trial n takes grid point n."""
    if sampler.kind == "grid":
        grid = {name: grid_values(param) for name, param in space.items()}
        return optuna.samplers.GridSampler(grid, seed=sampler.seed)
    if sampler.kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed, n_startup_trials=sampler.n_startup_trials)


def build_pruner(pruner: Pruner, max_epochs: int) -> optuna.pruners.BasePruner:
    """Pruners see one step per epoch: the validation metric after each."""
    if pruner.kind == "median":
        return optuna.pruners.MedianPruner(
            n_startup_trials=pruner.n_startup_trials, n_warmup_steps=pruner.n_warmup_steps
        )
    if pruner.kind == "hyperband":
        return optuna.pruners.HyperbandPruner(
            min_resource=pruner.min_resource,
            max_resource=max_epochs,
            reduction_factor=pruner.reduction_factor,
        )
    return optuna.pruners.NopPruner()


def distributions(space: Mapping[str, Range | Choices], kinds: Mapping[str, type | None]):
    """The space as Optuna distributions; `kinds` says which fields are ints."""
    out: dict[str, BaseDistribution] = {}
    for name, param in space.items():
        if isinstance(param, Choices):
            out[name] = CategoricalDistribution(param.choices)
        elif kinds[name] is int:
            step = int(param.step or 1)
            out[name] = IntDistribution(int(param.low), int(param.high), log=param.log, step=step)
        else:
            step = None if param.step is None else float(param.step)
            out[name] = FloatDistribution(
                float(param.low), float(param.high), log=param.log, step=step
            )
    return out


def suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    """Ask the trial for one parameter through the public suggest API."""
    if isinstance(dist, FloatDistribution):
        return trial.suggest_float(name, dist.low, dist.high, step=dist.step, log=dist.log)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, step=dist.step, log=dist.log)
    return trial.suggest_categorical(name, dist.choices)


def describe_distribution(param: Range | Choices) -> str:
    if isinstance(param, Choices):
        return "one of " + ", ".join(map(str, param.choices))
    kind = "log-uniform" if param.log else "uniform"
    step = f", step {param.step:g}" if param.step is not None else ""
    return f"{kind} [{param.low:g}, {param.high:g}]{step}"


def trial_counts(study: optuna.Study) -> Counter[str]:
    """Trials by state name (COMPLETE, PRUNED, FAIL, RUNNING, WAITING)."""
    return Counter(t.state.name for t in study.get_trials(deepcopy=False))


def fail_stale_trials(study: optuna.Study) -> None:
    """Fail (and so retry) trials whose worker stopped beating; no-op without heartbeats."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)


def beat_for_running(storage: RDBStorage, name: str) -> int:
    """Optuna counts a RUNNING trial stale only once it has a heartbeat, and a worker records its
    first one just after asking for the trial: a worker killed in between leaves the trial
    RUNNING for good. Beating once for every RUNNING trial when a launch starts gives such a
    trial a heartbeat that then goes stale after the grace; a live worker's own beats go on.
    Returns how many trials it beat for."""
    study_id = storage.get_study_id_from_name(name)
    running = storage.get_all_trials(study_id, deepcopy=False, states=(TrialState.RUNNING,))
    for trial in running:
        storage.record_heartbeat(
            storage.get_trial_id_from_study_id_trial_number(study_id, trial.number)
        )
    return len(running)


def existing_study(url: str, name: str, heartbeat: Heartbeat) -> optuna.Study | None:
    """The study if its storage and the study exist; never creates a file (for the dry run)."""
    if not storage_exists(url):
        return None
    try:
        return optuna.load_study(study_name=name, storage=build_storage(url, heartbeat))
    except KeyError:
        return None


def sibling_studies(url: str, prefix: str, heartbeat: Heartbeat) -> list[str]:
    """Other studies of the same search and scale in the storage (e.g. before the space changed)."""
    if not storage_exists(url):
        return []
    names = optuna.get_all_study_names(storage=build_storage(url, heartbeat))
    return sorted(n for n in names if n.startswith(prefix))
