"""Training harness: train networks at a controlled margin and compare them with the GP theory.

Modules
-------
validation.nero         Nero optimiser (per-neuron normalised updates, constraints, batched ensembles)
validation.minnorm      Minnorm optimiser (min sum of weight norms s.t. fitting every example; support vectors)
validation.ghost_bn     Ghost Batch Normalization
validation.schedules    large-batch lr rules: sqrt(batch) scaling, regime adaptation, step schedule
validation.distance     distance from initialisation and its log-law / power-law fit
validation.models       the paper's MLP / conv net, as single networks and batched ensembles
validation.train        full-batch training to targets (``||f(X) - alpha Y||``, MSE), lr decay, tolerance
validation.experiments  declarative experiment configs (``fig6``, ``minnorm``, ``large_batch``) at scales
                        smoke / quick / paper, with the hooks the sweep calls (units, unit function, compare)
validation.minnorm_experiment  ``minnorm``: Minnorm vs Nero vs SGD (early stopping, weight decay) on fig6's data
validation.large_batch  ``large_batch``: F1 net on Fashion-MNIST, small vs large batch and the remedies
validation.large_batch_report  its table and figure
validation.sweep        resumable sweeps: one JSON line per unit in ``DIR/.state/validate-NAME/runs.jsonl``
validation.compare      measured vs predicted accuracy: ``DIR/NAME-comparison.{csv,png,json}``
validation.diagnose     per-network diagnostics of a gap (fit, output scale, distance to the posterior)
validation.cli          ``gpmargin validate EXPERIMENT --scale ... --out DIR``

Per-network measures (margins, norms, spectral complexity) live in :mod:`gpmargin.measures`.
"""
