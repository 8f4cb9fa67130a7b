"""The harness: train networks at a controlled margin and compare them with the GP theory.

Layout
------
validation.registry            the experiments by name (``gpmargin validate NAME``); ``register`` adds one
validation.cli                 ``gpmargin validate EXPERIMENT --scale ... --out DIR`` (help from the registry)
validation.harness             how an experiment runs
    experiment                 ``Experiment``: config as data (fields, hash, ``--set``), the protocol
                               (``at_scale``, ``units``, ``unit_key``, ``run_unit``, ``report``)
    fields                     what each field may hold, checked at the boundary
    folders                    ``DIR/.state/validate-NAME/{config.json,runs.jsonl}`` and ``DIR/NAME-*``
    sweep                      resumable sweeps of any experiment (local or Dask, ``--budget``)
    margin_sweep               ``MarginSweep``: ensembles trained at each margin vs the GP (fig6, gd, minnorm)
validation.training            Nero, Minnorm, ghost BN, schedules, the paper's networks, losses and
                               targets, full-batch and minibatch trainers, the margin-sweep ensemble unit,
                               label noise, distance from initialisation
validation.theory              predictions of a sweep, gap statistics with their uncertainty, the
                               comparison report, Kendall's tau, per-network diagnostics of a gap
validation.experiments         one module per experiment (fig6, gd, minnorm, large_batch, measures),
                               imported only by the registry

Per-network measures (margins, norms, spectral complexity) live in :mod:`gpmargin.measures`.
"""
