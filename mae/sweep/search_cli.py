"""`python studies/run.py <search>`: the command line of a study file of kind `search`.

The same flags as a study: `--scale`, `--cluster`, `--set`, `--dry-run`, `--max-parallel` (workers
at once, instead of the file's `workers`), `--tracking-uri`, `--runs-dir`, and `--retry-failed`
(fail and retry trials left RUNNING by killed workers, for storages without heartbeats). Every
check runs before anything is written; a bad input is one line and exit code 2.
"""

from __future__ import annotations

import argparse

from tabulate import tabulate

from mae.overrides import flatten_dict
from mae.schema import ConfigError
from mae.sweep.plan import Plan
from mae.sweep.profile import IN_PROCESS, load_profile, render_sbatch, slurm_parameters
from mae.sweep.scale import load_scale
from mae.sweep.search import Interrupted, Launcher, SearchPlan, plan_search, run_search
from mae.sweep.search_spec import SearchSpec, load_search
from mae.sweep.search_study import (
    dashboard_target,
    describe_distribution,
    existing_study,
    has_heartbeat,
    shown_url,
    sibling_studies,
    storage_url,
    trial_counts,
)
from mae.sweep.status import with_status

EXIT_OK, EXIT_FAILED, EXIT_INTERRUPTED = 0, 1, 130  # as for a study (mae.sweep.cli)


def prepare(args: argparse.Namespace) -> SearchPlan:
    """Every check that can fail on bad input, in the order a user would fix them."""
    if args.max_parallel is not None and args.max_parallel < 1:
        raise ConfigError("--max-parallel", "max_parallel", args.max_parallel, "at least 1")
    spec = load_search(args.study)
    if args.seeds is not None:
        allowed = f"a search runs one seed; set it with --set {spec.protocol}.seed=N"
        raise ConfigError("--seeds", "seeds", args.seeds, allowed)
    scale = load_scale(args.scale or spec.scale)
    if args.cluster not in IN_PROCESS:
        load_profile(args.cluster)
    return plan_search(spec, scale, tuple(args.overrides), args.tracking_uri)


def _sampler_line(spec: SearchSpec) -> str:
    sampler = spec.sampler
    if sampler.kind == "tpe":
        return (
            f"TPE (seed {sampler.seed}, {sampler.n_startup_trials} random start-up trials, "
            "multivariate, constant liar for parallel workers)"
        )
    return f"{sampler.kind} (seed {sampler.seed})"


def _pruner_line(sp: SearchPlan) -> str:
    pruner = sp.spec.pruner
    if pruner.kind == "median":
        detail = (
            f"after {pruner.n_startup_trials} finished trials, from epoch "
            f"{max(1, pruner.n_warmup_steps)}"
        )
    elif pruner.kind == "hyperband":
        detail = (
            f"rungs from {pruner.min_resource} to {sp.max_epochs} epochs, "
            f"reduction factor {pruner.reduction_factor}"
        )
    else:
        return "none"
    return f"{pruner.kind} ({detail}) on per-epoch {sp.metric}"


def _storage_line(sp: SearchPlan) -> str:
    beat = sp.spec.heartbeat
    if has_heartbeat(sp.storage_url):
        how = (
            f"heartbeat every {beat.interval} s; a trial silent for {beat.grace} s is failed "
            f"and retried from its checkpoint (at most {beat.max_retry} times)"
        )
    else:
        how = "journal: no heartbeats; --retry-failed releases trials left RUNNING"
    return f"{shown_url(sp.storage_url)} ({how})"


def _space_table(sp: SearchPlan) -> str:
    recipe = getattr(sp.base, sp.protocol)
    rows = [
        (name, describe_distribution(param), getattr(recipe, name))
        for name, param in sp.spec.space.items()
    ]
    return tabulate(rows, headers=("parameter", "distribution", "default recipe"))


def _trials_line(sp: SearchPlan) -> str:
    spec = sp.spec
    study = existing_study(sp.storage_url, sp.study_name, spec.heartbeat)
    if study is None:
        line = "trials so far: none (a new study)"
    else:
        counts = trial_counts(study)
        line = "trials so far: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items()))
        if counts["COMPLETE"]:
            best = study.best_trial
            params = ", ".join(
                f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}"
                for k, v in best.params.items()
            )
            line += f"; best #{best.number}: {best.value:.2f} ({params})"
    prefix = f"{spec.name}/{sp.scale.name}/"
    siblings = sibling_studies(sp.storage_url, prefix, spec.heartbeat)
    others = [name for name in siblings if name != sp.study_name]
    if others:
        line += f"\nother studies of this search (another space or recipe): {', '.join(others)}"
    return line


def _launch_lines(sp: SearchPlan, cluster: str, max_parallel: int | None) -> list[str]:
    count = max_parallel or sp.spec.workers
    if cluster in IN_PROCESS:
        where = "in this process" if cluster == "debug" else f"a local queue, {count} at once"
        return [f"workers: {count} ({where})"]
    profile = load_profile(cluster)
    params = slurm_parameters(profile, sp.protocol, count)
    folder = profile.folder(strict=False) / "<launch>" / "%j"
    lines = [f"workers: one Slurm array of {count} task(s), profile {cluster!r}"]
    return lines + [f"  {line}" for line in render_sbatch(params, folder, count)]


def describe(sp: SearchPlan, cluster: str, max_parallel: int | None) -> str:
    spec = sp.spec
    plan = with_status(Plan(spec.name, sp.scale.name, [sp.pretrain, sp.default], sp.tracking_uri))
    pretrain, default = plan.runs
    chosen = ", ".join(f"{k}={v}" for k, v in flatten_dict(spec.pretraining).items())
    lines = [
        f"search {spec.name} at scale {sp.scale.name}: {spec.protocol} of the pre-training "
        f"{pretrain.key[:12]} ({chosen or 'the scale baseline'}; {pretrain.status})",
        f"optuna study: {sp.study_name}",
        f"storage: {_storage_line(sp)}",
        f"sampler: {_sampler_line(spec)}",
        f"pruner: {_pruner_line(sp)}",
        f"objective: {spec.direction} {sp.metric} after each trial's last epoch, "
        f"{spec.n_trials} finished trials",
        "",
        _space_table(sp),
        "",
        _trials_line(sp),
        *_launch_lines(sp, cluster, max_parallel),
        f"then on the test split, once each: the best parameters and the default recipe "
        f"({default.key[:12]}, {default.status})",
    ]
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    sp = prepare(args)
    if args.dry_run:
        print(describe(sp, args.cluster, args.max_parallel))
        return EXIT_OK
    how = Launcher(
        args.cluster,
        args.max_parallel,
        args.runs_dir,
        max_restarts=args.max_restarts,
        leave_running=args.leave_running,
    )
    try:
        outcome = run_search(sp, how, args.retry_failed)
    except (Interrupted, KeyboardInterrupt):
        print(f"{sp.spec.name}: interrupted; run the search again to continue it")
        return EXIT_INTERRUPTED
    record = outcome.record
    if record is not None:
        tests = record["test_top1"]
        print(
            f"{sp.spec.name}: best trial #{record['best_trial']} {sp.metric} "
            f"{record['best_value']:.2f}; test top-1 {tests['best']} (best parameters) vs "
            f"{tests['default']} (default recipe); trials {record['trials']}"
        )
        print(f"  best parameters: {record['params']}")
        use = f"--set {sp.protocol}=@search:{sp.spec.name}"
        print(f"  written to {outcome.path}; other studies use them with {use}")
    if outcome.problem:
        print(f"  FAILED: {outcome.problem}")
    print(f"Trials: `make search-ui` (optuna-dashboard on {shown_url(sp.storage_url)}), `make ui`")
    print(f"Report: python analysis/make_tables.py --scale {sp.scale.name} --only search")
    return EXIT_FAILED if outcome.problem else EXIT_OK


def dashboard_storage(name: str = "finetune_search") -> str:
    """What `optuna-dashboard` opens for the search `name` (`make search-ui`): its storage as
    configured in the file, beside the current MLflow store."""
    from mae.track import resolve_tracking_uri

    spec = load_search(name)
    return dashboard_target(storage_url(spec.storage, resolve_tracking_uri()))


if __name__ == "__main__":  # python -m mae.sweep.search_cli [SEARCH]: its storage, for the UI
    import sys

    try:
        print(dashboard_storage(*sys.argv[1:2]))
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
