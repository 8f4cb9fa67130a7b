"""Training harness: train networks at a controlled margin and compare them with the GP theory.

Modules
-------
validation.nero         Nero optimiser (per-neuron normalised updates, constraints, batched ensembles)
validation.models       the paper's MLP / conv net, as single networks and batched ensembles
validation.train        full-batch training to targets (``||f(X) - alpha Y||``, MSE), lr decay, tolerance
validation.experiments  declarative experiment configs (``fig6``) at scales smoke / quick / paper
validation.sweep        resumable sweeps: one JSON line per (margin, seed) in ``DIR/.state/validate-NAME/runs.jsonl``
validation.compare      measured vs predicted accuracy: ``DIR/NAME-comparison.{csv,png,json}``
validation.diagnose     per-network diagnostics of a gap (fit, output scale, distance to the posterior)
validation.cli          ``gpmargin validate EXPERIMENT --scale ... --out DIR``

Per-network measures (margins, norms, spectral complexity) live in :mod:`gpmargin.measures`.
"""
