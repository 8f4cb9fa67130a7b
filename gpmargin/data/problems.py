"""What can be wrong with one candidate file, as a short phrase for the user."""

from __future__ import annotations


class FileProblem(Exception):
    """A candidate file cannot be used; ``str(exc)`` says why (e.g. ``wrong checksum ...``)."""


def one_line(text: object) -> str:
    """Collapse whitespace and newlines so a message stays on one line."""
    return " ".join(str(text).split())
