"""`python studies/run.py NAME|PATH` (console script `mae-study`): plan a study and run it.

Everything is validated before anything happens: the study, the scale, the cluster profile, the
`--set` overrides and every expanded config. A bad input is one line on stderr and exit code 2,
with nothing launched and nothing written to the tracking store (it is created only afterwards).
Exit codes: 0 every run finished, 1 some runs failed (listed), 2 bad input, 130 interrupted
(Ctrl-C: nothing more is launched; running jobs are cancelled, or left running with
--leave-running, and the study resumes where it stopped when run again). SIGTERM and SIGHUP (a
`kill`, a CI time-out, a closed terminal) are taken as Ctrl-C: without it the launcher died and
its local jobs ran on, orphaned, to be launched a second time by the next run of the study.
SIGINT is handled even when the command was started with it ignored (`cmd &` in a script): its
local jobs would inherit that, and cancelling one is a SIGINT.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import signal
import sys
from collections.abc import Iterator, Sequence
from dataclasses import replace
from pathlib import Path

from tabulate import tabulate

from mae import track
from mae.schema import ConfigError
from mae.sweep import launch as launcher
from mae.sweep.plan import Plan, mark_shared, plan_study
from mae.sweep.profile import IN_PROCESS, load_profile
from mae.sweep.scale import Scale, load_scale
from mae.sweep.spec import StudySpec, available_studies, file_kind, load_study, study_path
from mae.sweep.status import with_status

log = logging.getLogger(__name__)

EXIT_OK, EXIT_FAILED, EXIT_BAD_INPUT, EXIT_INTERRUPTED = 0, 1, 2, 130
TERMINATION = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # handled as Ctrl-C


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="studies/run.py",
        description="Plan and run a study of MAE ablations (studies/<name>.yaml).",
        epilog="Exit codes: 0 all runs finished, 1 some runs failed, 2 bad input, "
        "130 interrupted (run the study again to resume).",
    )
    parser.add_argument("study", help="a study name (studies/<name>.yaml) or a path to one")
    parser.add_argument("--scale", help="micro | tiny | small | paper (default: the study's)")
    parser.add_argument(
        "--cluster",
        default="local",
        help="local (a bounded local queue), debug (in this process) or a Slurm profile "
        "slurm/<name>.yaml",
    )
    parser.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value in paper labels, e.g. --set pretrain.epochs=400 (repeatable)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the plan, launch nothing")
    parser.add_argument("--max-parallel", type=int, help="at most this many jobs at once")
    parser.add_argument(
        "--tracking-uri",
        help="MLflow store (default: MLFLOW_TRACKING_URI, else sqlite:///<project>/mlruns.db)",
    )
    parser.add_argument("--seeds", help="comma-separated seeds replacing the study's, e.g. 0,1,2")
    parser.add_argument(
        "--retry-failed",
        action="store_true",
        help="rerun runs that failed (a search: retry trials left RUNNING by killed workers)",
    )
    parser.add_argument("--runs-dir", type=Path, help="checkpoints and pictures (default: runs/)")
    parser.add_argument(
        "--max-restarts",
        type=int,
        default=3,
        help="local queue: start a job that died without a result (killed) again from its "
        "checkpoint up to this many times (default 3; Slurm requeues by itself)",
    )
    parser.add_argument(
        "--leave-running",
        action="store_true",
        help="on Ctrl-C, leave the running Slurm jobs to finish instead of cancelling them",
    )
    return parser


def parse_seeds(text: str | None) -> list[int] | None:
    if text is None:
        return None
    allowed = "comma-separated distinct non-negative integers, e.g. 0,1,2"
    try:
        seeds = [int(part) for part in text.split(",")]
    except ValueError:
        raise ConfigError("--seeds", "seeds", text, allowed) from None
    if any(s < 0 for s in seeds) or len(set(seeds)) != len(seeds):
        raise ConfigError("--seeds", "seeds", text, allowed)
    return seeds


def check_cluster(name: str) -> None:
    """`local`, `debug`, or a Slurm profile that exists, validates and names a usable folder."""
    if name not in IN_PROCESS:
        load_profile(name).folder()


def prepare(args: argparse.Namespace) -> tuple[StudySpec, Scale, Plan]:
    """Every check that can fail on bad input, in the order a user would fix them."""
    if args.max_parallel is not None and args.max_parallel < 1:
        raise ConfigError("--max-parallel", "max_parallel", args.max_parallel, "at least 1")
    if args.max_restarts < 0:
        raise ConfigError("--max-restarts", "max_restarts", args.max_restarts, "at least 0")
    spec = load_study(args.study)
    scale = load_scale(args.scale or spec.scale)
    check_cluster(args.cluster)
    seeds = parse_seeds(args.seeds)
    uri = track.resolve_tracking_uri(args.tracking_uri)  # where @search:<name> is read
    plan = plan_study(spec, scale, args.overrides, seeds, reference_uri=uri)
    return spec, scale, plan


def other_plans(spec: StudySpec, scale: Scale) -> list[Plan]:
    """Plans of the other study files at this scale, to show which runs they share."""
    plans = []
    for name in available_studies():
        if name == spec.name:
            continue
        try:
            plans.append(plan_study(load_study(name), scale))
        except ConfigError as exc:
            log.debug("not comparing with %s: %s", name, exc)
    return plans


def _shorten(names: Sequence[str], shown: int = 3) -> str:
    more = f" +{len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more


def plan_table(plan: Plan) -> str:
    rows = [
        (
            run.name,
            run.stage,
            run.key[:12],
            run.status + (f": {run.reason}" if run.reason else ""),
            _shorten(run.shared_with),
        )
        for run in plan.runs
    ]
    return tabulate(rows, headers=("name", "stage", "key", "status", "shared with"))


def dry_run(args: argparse.Namespace, spec: StudySpec, scale: Scale, plan: Plan) -> int:
    plan = with_status(replace(plan, tracking_uri=track.resolve_tracking_uri(args.tracking_uri)))
    plan = mark_shared(plan, other_plans(spec, scale))
    counts = ", ".join(f"{n} {status}" for status, n in sorted(plan.counts().items()))
    print(
        f"study {spec.name} ({spec.reproduces or 'no paper reference'}) at scale {scale.name}: "
        f"{len(plan.runs)} runs ({counts})"
    )
    print(plan_table(plan))
    print()
    print(launcher.describe(plan, args.cluster, args.max_parallel, args.retry_failed))
    return EXIT_OK


def run(args: argparse.Namespace, spec: StudySpec, scale: Scale, plan: Plan) -> int:
    uri = track.resolve_tracking_uri(args.tracking_uri)
    experiment_id = track.init_store(uri, scale.name)
    plan = with_status(replace(plan, tracking_uri=uri, experiment_id=experiment_id))
    counts = ", ".join(f"{n} {status}" for status, n in sorted(plan.counts().items()))
    log.info("study %s at scale %s: %d runs (%s)", spec.name, scale.name, len(plan.runs), counts)
    report = launcher.launch(
        plan,
        cluster=args.cluster,
        max_parallel=args.max_parallel,
        retry_failed=args.retry_failed,
        tracking_uri=uri,
        experiment_id=experiment_id,
        runs_dir=args.runs_dir,
        max_restarts=args.max_restarts,
        leave_running=args.leave_running,
    )
    failed = list(report.failed)
    if not args.retry_failed:
        failed += [
            (run.name, "failed before; rerun with --retry-failed")
            for run in plan.runs
            if run.status == "failed"
        ]
    unavailable = [run for run in plan.runs if run.status == "unavailable"]
    print(
        f"{spec.name}: {len(report.launched)} launched, {len(report.finished)} finished now, "
        f"{plan.counts()['finished']} reused, {len(failed)} failed, "
        f"{len(unavailable)} unavailable"
    )
    for name, error in failed:
        print(f"  FAILED {name}: {error}")
    for run in unavailable:
        print(f"  unavailable {run.name}: {run.reason}")
    if report.interrupted:
        what = "left running" if args.leave_running else "cancelled"
        print(
            f"interrupted: {len(report.interrupted)} job(s) {what}; run the study again to resume"
        )
        return EXIT_INTERRUPTED
    print(f"Runs: `make ui` (MLflow UI on {uri}), experiment {track.experiment_name(scale.name)}")
    print(f"Tables: python analysis/make_tables.py --scale {scale.name}")
    return EXIT_FAILED if failed else EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:  # --help (0) or a malformed command line (2): argparse printed it
        return int(exc.code or 0)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    with _termination_as_interrupt():
        return _main(args)


@contextlib.contextmanager
def _termination_as_interrupt() -> Iterator[None]:
    """SIGINT, SIGTERM and SIGHUP raise KeyboardInterrupt while the command runs."""
    kept = {sig: signal.signal(sig, signal.default_int_handler) for sig in TERMINATION}
    try:
        yield
    finally:
        for sig, handler in kept.items():
            signal.signal(sig, handler)


def _main(args: argparse.Namespace) -> int:
    try:
        if file_kind(study_path(args.study)) == "search":
            from mae.sweep import search_cli  # Optuna only for searches

            return search_cli.main(args)
        spec, scale, plan = prepare(args)
        if args.dry_run:
            return dry_run(args, spec, scale, plan)
        return run(args, spec, scale, plan)
    except (ConfigError, track.TrackingError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
