"""``gpmargin validate EXPERIMENT --scale quick|paper --out DIR [--device ...] [--seed N] [--set K=V]
[--workers N | --scheduler ADDRESS]``.

Runs (or resumes) the experiment's sweep into ``DIR/.state/validate-EXPERIMENT/runs.jsonl``, then
compares the measured accuracies with the NNGP predictions (``DIR/EXPERIMENT-comparison.{csv,png,json}``).
Several experiments (and figures) can share ``DIR``.

``gpmargin scaling DIR... --experiment E --prediction P --by FIELD --out OUT``: the gaps of
several finished comparisons that differ in one setting (a width ladder), with power-law fits
(:mod:`validation.theory.scaling`), into ``OUT/scaling-E-P-FIELD.{json,csv,png}``.
"""

from __future__ import annotations

import argparse
import math
import time

from gpmargin.distributed.cluster import add_execution_arguments
from gpmargin.io import path_argument
from validation.harness.experiment import SCALES
from validation.registry import EXPERIMENTS


def budget_seconds(text: str) -> float:
    """``--budget``: a positive, finite number of seconds."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--budget {text!r} is not a number of seconds") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"--budget {text} must be a positive, finite number of seconds")
    return value


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "validate",
        help="train networks at controlled margins and compare with the GP prediction",
        description="Train ensembles of networks at controlled margins (Nero, loss ||f(X) - alpha Y||), "
                    "measure them, and compare their test accuracy with NNGP predictions. "
                    "Resumable: rerun with the same --out to finish an interrupted sweep.")
    p.add_argument("experiment", metavar="EXPERIMENT",
                   help="one of: " + "; ".join(f"{name} ({cls.summary})" for name, cls in EXPERIMENTS.items()))
    p.add_argument("--scale", default="quick", help=f"one of {', '.join(SCALES)} (default quick)")
    p.add_argument("--out", required=True, type=path_argument, help="output folder (created; reused to resume; shared with other "
                   "experiments and figures: state in DIR/.state/validate-EXPERIMENT/, results DIR/EXPERIMENT-*)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N")
    p.add_argument("--seed", type=int, default=None,
                   help="first network seed (seeds N, N+1, ...; member j of seed s uses 1000*s+j)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                   help="change one field of the experiment's config, e.g. --set width=2048 --set members=4 "
                        "--set margins=1e-3:1e1:7 (repeatable; recorded in the state folder's config.json and the plot title)")
    p.add_argument("--budget", type=budget_seconds, default=None, metavar="SECONDS",
                   help="start no unit that would not finish within SECONDS from now (estimated from the "
                        "finished units); the sweep stops cleanly and a rerun resumes it")
    p.add_argument("--no-compare", action="store_true", help="only run the sweep")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    add_execution_arguments(p)
    p.set_defaults(func=run)
    register_scaling(subparsers)
    return p


def register_scaling(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "scaling",
        help="gaps of several validate runs that differ in one setting, with power-law fits (width ladders)",
        description="Read finished 'gpmargin validate' comparisons that differ in one config field (e.g. width), "
                    "tabulate each gap statistic per setting (mean and standard error over seeds) and fit "
                    "gap = a * setting^p on log-log axes (slope with a bootstrap interval over seeds).")
    p.add_argument("folders", nargs="+", type=path_argument, metavar="DIR",
                   help="output folders of 'gpmargin validate EXPERIMENT --out DIR', one per setting")
    p.add_argument("--experiment", required=True, choices=sorted(EXPERIMENTS), help="the experiment the folders ran")
    p.add_argument("--prediction", required=True,
                   help="which prediction's gaps, as in the comparison's columns (gd: nngp_accuracy, ntk_accuracy, "
                        "ntk_time_accuracy; fig6: gp_accuracy, gp_constrained_accuracy)")
    p.add_argument("--by", required=True, metavar="FIELD", help="the config field that differs (width, depth, n_train)")
    p.add_argument("--ensemble", type=int, default=1, help="ensemble size whose gaps are read (default 1: single networks)")
    p.add_argument("--out", required=True, type=path_argument,
                   help="output folder for scaling-EXPERIMENT-PREDICTION-FIELD.{csv,png,json}")
    p.set_defaults(func=run_scaling)
    return p


def run_scaling(args: argparse.Namespace) -> int:
    from gpmargin.io import check_output_folder
    from validation.theory.scaling import ladder, write_ladder

    out = check_output_folder(args.out)
    result = ladder(args.folders, args.experiment, args.prediction, args.by, args.ensemble)
    files = write_ladder(result, out / f"scaling-{args.experiment}-{args.prediction}-{args.by}")
    for stat, f in result["fits"].items():
        se = "n/a with two settings" if f["slope_se"] is None else f"{f['slope_se']:.3f}"
        print(f"{stat} ~ {args.by}^p: p = {f['slope']:.3f} (95 % bootstrap interval [{f['interval'][0]:.3f}, "
              f"{f['interval'][1]:.3f}], regression s.e. {se})")
    print(f"wrote {', '.join(str(f) for f in files)}")
    return 0


def run(args: argparse.Namespace) -> int:
    from gpmargin.distributed.cluster import execution_from_args
    from gpmargin.errors import GpmarginError
    from gpmargin.io import check_output_folder
    from gpmargin.io import resolve_device
    from validation.harness.folders import runs_path
    from validation.harness.sweep import records_complete, run_sweep
    from validation.registry import get_experiment

    config = get_experiment(args.experiment, args.scale)
    if args.overrides:
        config = config.with_overrides(args.overrides)
    if args.seed is not None:
        if args.seed < 0:
            raise GpmarginError(f"--seed must be a non-negative integer, got {args.seed}")
        config = config.with_seed(args.seed)
    execution = execution_from_args(args)
    # units resolve --device where they run; the comparison (GP predictions) runs here
    device = resolve_device(args.device if execution.scheduler is None else "auto")
    if execution.scheduler is None:  # with --scheduler, run_sweep checks it first (nothing written before)
        check_output_folder(args.out)  # before any work: a bad --out fails in one line
    t0 = time.perf_counter()
    task = config.load_task()
    records = run_sweep(config, args.out, args.device, progress=not args.no_progress, task=task,
                        execution=execution, budget=args.budget)
    print(f"sweep: {len(records)} unit(s) in {runs_path(config, args.out)} ({time.perf_counter() - t0:.1f} s this run)")
    if not records_complete(config, records):
        if args.budget is not None:  # stopped by the budget: said so above; the comparison waits for the rest
            return 0
        raise ValueError("sweep incomplete; rerun the same command to resume")
    if not args.no_compare:
        summary = config.report(args.out, records, task=task, device=device)
        files = (summary or {}).get("files") or {}
        print(f"comparison written to {', '.join(files.values()) if files else args.out}")
    return 0
