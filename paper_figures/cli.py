"""``gpmargin figure figN --scale smoke|quick|paper --out DIR [--device ...] [--dataset NAME]
[--workers N | --scheduler ADDRESS]``
and ``gpmargin figure list``."""

from __future__ import annotations

import argparse

from gpmargin.distributed.cluster import add_execution_arguments
from paper_figures import FIGURES, SCALES
from gpmargin.io import path_argument


def register(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser(
        "figure",
        help="reproduce a figure of the paper (figN.png + figN.json)",
        description="Reproduce figure N of Farhang et al. (ICML 2022): writes DIR/figN.png and DIR/figN.json "
                    "(every number behind the plot, the claims checked, config, versions, device, wall time). "
                    "Resumable: rerun with the same --out to finish an interrupted run; a finished folder "
                    "is redrawn without training. 'gpmargin figure list' lists the figures.")
    p.add_argument("name", help=f"figure ({', '.join(FIGURES)}) or 'list'")
    p.add_argument("--scale", default="quick", help=f"one of {', '.join(SCALES)} (default quick)")
    p.add_argument("--out", default=None, type=path_argument, help="output folder (created; reused to resume)")
    p.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N")
    p.add_argument("--dataset", default=None,
                   help="dataset for figures that take one (fig9: cifar10 at paper scale, fashion_mnist otherwise)")
    p.add_argument("--quiet", action="store_true", help="do not print progress")
    add_execution_arguments(p)
    p.set_defaults(func=run)
    return p


def run(args: argparse.Namespace) -> int:
    from paper_figures import get_figure
    from gpmargin.errors import GpmarginError

    if args.name.strip().lower() == "list":
        for name in FIGURES:
            mod = get_figure(name)
            print(f"{name:6s} {mod.CLAIM}")
        return 0
    get_figure(args.name)  # unknown figure -> one-line error before anything else
    if args.scale not in SCALES:
        raise GpmarginError(f"unknown scale {args.scale!r}: use one of {', '.join(SCALES)}")
    if not args.out:
        raise GpmarginError("--out DIR is required (the folder for figN.png and figN.json; several figures may share it)")
    from gpmargin.distributed.cluster import execution_from_args
    from paper_figures.runner import run_figure

    payload = run_figure(args.name, args.scale, args.out, device=args.device, dataset=args.dataset,
                         progress=not args.quiet, execution=execution_from_args(args))
    held = sum(c["holds"] for c in payload["claims"].values())
    print(f"{payload['figure']} ({args.scale}): wrote {payload['png']} and .json in {payload['wall_s']:.1f} s "
          f"({len(payload['units']['run'])} unit(s) run, {len(payload['units']['reused'])} reused); "
          f"claims holding: {held}/{len(payload['claims'])}")
    for name, c in payload["claims"].items():
        print(f"  [{'ok' if c['holds'] else 'NO'}] {name}: {c['detail']}")
    return 0
