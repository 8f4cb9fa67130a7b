"""How an experiment runs: the protocol (:mod:`~validation.harness.experiment`), the fields a config
may hold (:mod:`~validation.harness.fields`), the results folder (:mod:`~validation.harness.folders`),
the resumable sweep (:mod:`~validation.harness.sweep`) and margin sweeps
(:mod:`~validation.harness.margin_sweep`)."""
