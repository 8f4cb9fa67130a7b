"""``gpmargin data info``: where each dataset split was found, and its size."""

from __future__ import annotations

import argparse

from gpmargin.data import locate
from gpmargin.data.digits import load_digits_split
from gpmargin.data.sources import DATASETS, SPECS, SPLITS
from gpmargin.io import path_argument


def register(subparsers) -> None:
    """Add ``data`` (with ``info``) to the top-level subparsers."""
    p = subparsers.add_parser("data", help="datasets: where they are and how big")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION")
    info = sub.add_parser("info", help="list each dataset split, where it was found (or every path tried), and its size")
    info.add_argument("--data-root", "--root", dest="root", default=None, type=path_argument,
                      help="extra folder searched first (holding the files or <name>/), as in 'gpmargin predict'")
    info.set_defaults(func=run_info)
    p.set_defaults(func=lambda args: (p.print_help(), 2)[1])


def describe(name: str, split: str, root=None) -> str:
    """One line for one split: location and size, or every path tried.  Never downloads."""
    if name == "digits":
        x, _ = load_digits_split(split)
        return f"sklearn.datasets.load_digits (fixed stratified split): {len(x)} examples, shape {tuple(x.shape[1:])}"
    s = locate.search(name, split, root, download=False)
    if s.found:
        f = s.found
        return f"{f.folder} ({f.origin}): {len(f.images)} examples, shape {tuple(f.images.shape[1:])}"
    return f"not found; tried {s.tried()}; {locate.how_to_fix(SPECS[name], split, download=False)}"


def run_info(args: argparse.Namespace) -> int:
    if args.root is not None:
        locate.check_root(args.root, "--data-root")
    print(f"data search order: --data-root, ${locate.ENV_DATA}/<name>, system packages, cache {locate.cache_dir()}")
    print(f"downloads: {'on' if locate.downloads_enabled() else 'off'} (not attempted by 'data info')")
    for name in DATASETS:
        print(f"{name} ({SPECS[name].title})")
        for split in SPLITS:
            print(f"  {split}: {describe(name, split, args.root)}")
    return 0
