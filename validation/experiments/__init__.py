"""One module per experiment, each defining its :class:`~validation.harness.experiment.Experiment`
subclass as ``EXPERIMENT``; only :mod:`validation.registry` imports them."""
