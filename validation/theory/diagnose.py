"""Where does a gap between trained networks and the GP prediction come from?

For one unit (margin x seed) of an experiment, :func:`diagnose_unit` retrains the same
ensemble (seeds are deterministic) and compares every trained network with the NNGP
posterior (binary tasks):

``nn_accuracy``
    the network's test accuracy.
``gp_at_margin``
    the paper's prediction: a GP draw conditioned on ``f(train) = alpha * y``,
    expected accuracy ``mean_i Phi(alpha * y_i mu_i / s_i)``.
``gp_at_actual_outputs``
    a GP draw conditioned on the network's *actual* training outputs ``f(train)`` (which
    differ from ``alpha * y`` when training did not reach its targets).  If the network is
    a posterior sample, this matches ``nn_accuracy`` whatever the fit.
``z2``
    mean over test points of ``((f(x) - m(x)) / s(x))^2`` with ``m, s`` the posterior given
    the actual training outputs: about 1 for a posterior sample, larger when the network's
    test outputs are further from the posterior mean than the GP's own spread.
``corr``
    correlation between the network's test outputs and that posterior mean.
``fit``
    relative training error ``||f(X) - alpha Y|| / ||alpha Y||`` and the output scale
    ``rms f(X) / alpha``.

    python -m validation.theory.diagnose fig6 --scale quick --margins 0.001 0.1 10 [--constrained]
        [--set width=2048 --set members=2 ...]
"""

from __future__ import annotations

import argparse
import sys
import time

import numpy as np
import torch

from gpmargin.io import resolve_device
from validation.registry import get_experiment
from validation.training.ensemble import train_ensemble


def diagnose_unit(config, task, margin: float, seed: int = 0, device="cpu", constrained: bool = False) -> dict:
    from gpmargin.kernels import paper_mlp
    from gpmargin.predict import posterior

    dev = resolve_device(device) if isinstance(device, str) else device
    if not task.y_train.is_floating_point():
        raise ValueError("diagnose_unit handles binary tasks only")
    t0 = time.perf_counter()
    u = train_ensemble(config, task, margin, seed, dev)
    f_tr, f_te = u["f_train"][..., 0], u["f_test"][..., 0]  # (k, n), (k, m)
    k = f_tr.shape[0]
    kernel = paper_mlp(config.depth, constrained=constrained)
    x_tr, x_te = task.x_train.double(), task.x_test.double()
    y_tr, y_te = task.y_train.double(), task.y_test.double()
    cols = torch.cat([y_tr.reshape(-1, 1), f_tr.T], dim=1)  # (n, 1 + k): labels, then each network
    post = posterior(kernel, x_tr, cols, x_te, kind=config.gp_kind)
    mean = post.mean.reshape(x_te.shape[0], -1).cpu()
    s = post.std.reshape(-1).cpu()
    mu_y, mu_f = mean[:, 0], mean[:, 1:]
    phi = torch.special.ndtr
    out = {"margin": margin, "seed": seed, "constrained_kernel": constrained, "members": k}
    out["gp_at_margin"] = float(phi(margin * y_te * mu_y / s).mean())
    out["nn_accuracy"] = [float((torch.sign(f_te[j]) == y_te).double().mean()) for j in range(k)]
    out["gp_at_actual_outputs"] = [float(phi(y_te * mu_f[:, j] / s).mean()) for j in range(k)]
    out["z2"] = [float((((f_te[j] - mu_f[:, j]) / s) ** 2).mean()) for j in range(k)]
    out["corr"] = [float(np.corrcoef(f_te[j].numpy(), mu_f[:, j].numpy())[0, 1]) for j in range(k)]
    target = margin * y_tr
    out["relative_error"] = [float((f_tr[j] - target).norm() / target.norm()) for j in range(k)]
    out["train_output_rms_over_margin"] = [float(f_tr[j].square().mean().sqrt() / margin) for j in range(k)]
    out["test_output_rms"] = [float(f_te[j].square().mean().sqrt()) for j in range(k)]
    out["gp_posterior_std_rms"] = float(s.square().mean().sqrt())
    out["seconds"] = time.perf_counter() - t0
    return out


def summarise(d: dict) -> str:
    m = lambda v: float(np.mean(v))  # noqa: E731
    return (f"alpha={d['margin']:.4g}: nn={m(d['nn_accuracy']):.4f}  gp(alpha)={d['gp_at_margin']:.4f}  "
            f"gp(actual f_train)={m(d['gp_at_actual_outputs']):.4f}  z2={m(d['z2']):.2f}  corr={m(d['corr']):.3f}  "
            f"rel.err={m(d['relative_error']):.3f}  rms f/alpha={m(d['train_output_rms_over_margin']):.3g}  "
            f"rms f_test={m(d['test_output_rms']):.3g}  gp std={d['gp_posterior_std_rms']:.3g}")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("experiment")
    ap.add_argument("--scale", default="quick")
    ap.add_argument("--margins", type=float, nargs="+", required=True)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", dest="overrides",
                    help="change a field of the experiment's config, as for gpmargin validate "
                         "(e.g. --set width=2048 --set members=2)")
    ap.add_argument("--constrained", action="store_true", help="use the exact constrained kernel")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json", default=None, help="append results as JSON lines to this file")
    a = ap.parse_args(argv)

    config = get_experiment(a.experiment, a.scale)
    overrides = list(a.overrides)
    keys = {o.partition("=")[0].strip() for o in overrides}
    if "members" in keys and "ensembles" not in keys:
        overrides.append("ensembles=1")  # ensemble sizes play no part in the diagnosis
    config = config.with_overrides(overrides)
    task = config.load_task()
    for alpha in a.margins:
        d = diagnose_unit(config, task, alpha, a.seed, a.device, a.constrained)
        d["config"] = config.to_dict()
        print(summarise(d), flush=True)
        if a.json:
            from gpmargin.io import append_jsonl

            append_jsonl(a.json, d)
    return 0


if __name__ == "__main__":
    from gpmargin.errors import GpmarginError

    try:
        sys.exit(main())
    except GpmarginError as exc:
        sys.exit(f"error: {exc}")
