"""The ``gpmargin`` command line.

Each subcommand lives beside the code it drives and registers itself here through a
``register(subparsers)`` function that adds its parser and sets ``func``:

    gpmargin data info            gpmargin.data.cli
    gpmargin predict ...          gpmargin.predict.cli
    gpmargin kernel ...           gpmargin.distributed.cli
    gpmargin validate ...         validation.cli
    gpmargin figure ...           paper_figures.cli

Errors meant for the user (``GpmarginError``, ``ValueError``, missing files) are
printed as one line, ``error: ...``, with exit status 2; warnings (data substitutions,
jitter, unseen classes, ...) as one line, ``warning: ...``, in every subcommand.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import sys
import warnings

from gpmargin import __version__
from gpmargin.errors import GpmarginError

SUBCOMMANDS = {  # subcommand -> the module that registers it
    "data": "gpmargin.data.cli",
    "predict": "gpmargin.predict.cli",
    "kernel": "gpmargin.distributed.cli",
    "validate": "validation.cli",
    "scaling": "validation.cli",
    "figure": "paper_figures.cli",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The command line's parser; with ``command`` (one of :data:`SUBCOMMANDS`) only that
    subcommand's module is imported, so ``gpmargin predict`` does not load the training harness."""
    parser = argparse.ArgumentParser(
        prog="gpmargin",
        description="Predict and measure how normalized margin drives generalization (Farhang et al. 2022).",
    )
    parser.add_argument("--version", action="version", version=f"gpmargin {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    names = [SUBCOMMANDS[command]] if command in SUBCOMMANDS else dict.fromkeys(SUBCOMMANDS.values())
    for name in names:
        try:
            module = importlib.import_module(name)
        except ModuleNotFoundError as exc:
            if exc.name == name or (exc.name and name.startswith(exc.name)):
                continue  # that part of the toolkit is not built yet
            raise
        module.register(sub)
    return parser


def show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` for the command line: ``warning: <message>`` on one line, no source line."""
    text = " ".join(str(message).split())
    print(f"warning: {text}", file=file if file is not None else sys.stderr)


@contextlib.contextmanager
def cli_warnings():
    """Show warnings in the command line's one style while the block runs (restored afterwards)."""
    saved = warnings.showwarning
    warnings.showwarning = show_warning
    try:
        yield
    finally:
        warnings.showwarning = saved


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    command = argv[0] if argv and argv[0] in SUBCOMMANDS else None
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        with cli_warnings():
            result = args.func(args)
    except (GpmarginError, ValueError, FileNotFoundError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    return int(result or 0)


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
