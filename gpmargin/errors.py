"""Exception types whose message is shown to the user as a single line."""


class GpmarginError(ValueError):
    """Bad input or an unavailable resource, explained in one line.

    The CLI prints ``error: <message>`` and exits with status 2 instead of a traceback.
    Subclasses ``ValueError`` so library users can catch it as the usual bad-input type.
    """


class DataError(GpmarginError):
    """A dataset is missing, truncated, corrupt, or cannot be downloaded."""
