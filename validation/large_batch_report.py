"""The ``large_batch`` comparison: a table per arm and a three-panel figure.

Written in the results folder as ``<experiment>-<file>`` (``large_batch-comparison.csv``, ...):

``comparison.csv``  one row per arm (means over seeds): batch, lr, epochs, updates, test and
                    train accuracy, the generalization gap ``train - test``, the large-batch gap
                    ``test(small) - test(arm)``, the share of the ``large`` arm's gap the arm
                    closes, and the distance-from-init fit (log slope, power exponent, better law);
``comparison.png``  (a) test accuracy per arm, (b) the two gaps, (c) ``||w_t - w_0||`` against
                    ``log t`` per arm;
``comparison.json`` all of it with the per-network measures and run metadata.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from gpmargin.io import atomic_savefig, atomic_write_json, atomic_write_text, run_metadata


def arm_table(config, records: list[dict]) -> list[dict[str, Any]]:
    """One row per arm, means over seeds (see module docstring)."""
    rows = []
    for arm in config.arms:
        every = [r for r in records if r["arm"] == arm]
        if not every:
            continue
        rs = [r for r in every if not r.get("diverged")]  # a diverged run has no measures
        m = [r["members"][0] for r in rs]
        fits = [r["distance"]["fit"] for r in rs if r["distance"]["fit"]]
        s = every[0]["settings"]

        def mean(key):
            vals = [x[key] for x in m if x[key] is not None]
            return float(np.mean(vals)) if vals else None

        row = {"arm": arm, "batch_size": s["batch_size"], "ghost_batch_size": s["ghost_batch_size"], "lr": s["lr"],
               "epochs": s["epochs"], "updates": every[0]["updates"], "seeds": len(rs),
               "diverged": len(every) - len(rs),
               "test_accuracy": mean("test_accuracy"), "train_accuracy": mean("train_accuracy"),
               "frobenius_normalized_margin": mean("frobenius_normalized_margin"),
               "distance_log_slope": float(np.mean([f["log_slope"] for f in fits])) if fits else None,
               "distance_power_exponent": float(np.mean([f["power_exponent"] for f in fits])) if fits else None,
               "distance_better_law": ",".join(sorted({f["better"] for f in fits})) if fits else None}
        row["generalization_gap"] = None if not rs else row["train_accuracy"] - row["test_accuracy"]
        rows.append(row)
    small = next((r for r in rows if r["arm"] == "small"), None)
    large = next((r for r in rows if r["arm"] == "large"), None)
    small = small if small and small["test_accuracy"] is not None else None
    large = large if large and large["test_accuracy"] is not None else None
    for r in rows:
        ok = r["test_accuracy"] is not None
        r["gap_vs_small"] = small["test_accuracy"] - r["test_accuracy"] if small and ok else None
        base = large["test_accuracy"] - small["test_accuracy"] if small and large else None
        r["fraction_of_large_batch_gap_closed"] = ((r["test_accuracy"] - large["test_accuracy"]) / -base
                                                   if base and base < 0 and ok else None) if r["arm"] != "small" else None
    return rows


def compare_large_batch(config, out, records: list[dict], task=None, device=None, verbose: bool = True):
    from validation.sweep import output_path

    files = {ext: str(output_path(config, out, f"comparison.{ext}")) for ext in ("csv", "png", "json")}
    rows = arm_table(config, records)
    cols = list(rows[0].keys()) if rows else []
    lines = [",".join(cols)] + [",".join("" if r[c] is None else (f"{r[c]:.6g}" if isinstance(r[c], float)
                                                                    else str(r[c])) for c in cols) for r in rows]
    atomic_write_text(files["csv"], "\n".join(lines) + "\n")
    _plot(config, rows, records, files["png"])
    summary = {"experiment": config.name, "scale": config.scale, "overrides": config.overrides(),
               "config_hash": config.config_hash(), "arms": rows,
               "networks": [{"arm": r["arm"], "seed": r["seed"], **(r["members"][0] if r["members"] else {"diverged": True}),
                             "distance": r["distance"]} for r in records],
               "units": len(records), "files": files,
               "metadata": run_metadata(device, data_info=getattr(task, "info", None))}
    atomic_write_json(files["json"], summary)
    if verbose:
        for r in rows:
            if r["test_accuracy"] is None:
                print(f"{r['arm']:>24}: B={r['batch_size']:<5} lr={r['lr']:.3g}: all {r['diverged']} run(s) diverged")
                continue
            gv = r["gap_vs_small"]
            print(f"{r['arm']:>24}: B={r['batch_size']:<5} lr={r['lr']:.3g} epochs={r['epochs']:g} "
                  f"test {r['test_accuracy']:.4f} train {r['train_accuracy']:.4f} gap vs small "
                  f"{'' if gv is None else f'{gv:+.4f}'}  distance: {r['distance_better_law']} law, "
                  f"log slope {r['distance_log_slope'] if r['distance_log_slope'] is None else round(r['distance_log_slope'], 4)}")
    return summary


def _plot(config, rows, records, path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 3, figsize=(15, 4.2))
    gone = [r["arm"] for r in rows if r["test_accuracy"] is None]
    rows = [r for r in rows if r["test_accuracy"] is not None]
    if gone:
        fig.suptitle("diverged (not drawn): " + ", ".join(gone), fontsize=9)
    names = [r["arm"].replace("+", "\n+") for r in rows]
    xs = np.arange(len(rows))
    ax = axes[0]
    ax.bar(xs - 0.2, [r["train_accuracy"] for r in rows], 0.4, label="train", color="0.75")
    ax.bar(xs + 0.2, [r["test_accuracy"] for r in rows], 0.4, label="test", color="C0")
    for x, r in zip(xs, rows):
        ax.text(x + 0.2, r["test_accuracy"], f"{r['test_accuracy']:.3f}", ha="center", va="bottom", fontsize=7)
    lo = min((r["test_accuracy"] for r in rows), default=0.0)
    ax.set_ylim(max(0.0, lo - 0.1), 1.0)
    ax.set_xticks(xs, names, fontsize=7)
    ax.set_ylabel("accuracy")
    ax.set_title("(a) accuracy per arm")
    ax.legend(fontsize=8)
    ax = axes[1]
    ax.bar(xs - 0.2, [np.nan if r["gap_vs_small"] is None else r["gap_vs_small"] for r in rows], 0.4, color="C3", label="test(small) − test(arm)")
    ax.bar(xs + 0.2, [r["generalization_gap"] for r in rows], 0.4, color="C1", label="train − test")
    ax.axhline(0, color="k", lw=0.6)
    ax.set_xticks(xs, names, fontsize=7)
    ax.set_ylabel("accuracy difference")
    ax.set_title("(b) large-batch gap and generalization gap")
    ax.legend(fontsize=8)
    ax = axes[2]
    for i, arm in enumerate(config.arms):
        for r in (r for r in records if r["arm"] == arm):
            d = r["distance"]
            fit = d["fit"]
            lab = f"{arm} (B={r['settings']['batch_size']})" + (f", {fit['better']} law" if fit else "")
            ax.plot(d["iterations"], d["distance"], "-", color=f"C{i}", lw=2.5 - 0.4 * i,
                    label=lab if r["seed"] == config.seeds[0] else None)
    ax.set_xscale("log")
    ax.set_xlabel("iteration t (log scale)")
    ax.set_ylabel("‖w_t − w_0‖")
    ax.set_title("(c) distance from initialisation\n(large-batch arms share their first steps)", fontsize=10)
    ax.legend(fontsize=7)
    fig.suptitle(f"large_batch ({config.scale}): {config.dataset}, {config.n_train} training images"
                 f"{' (a subset)' if config.n_train < 60000 else ''}, F1 MLP ({config.depth - 1}×{config.width} + BN), "
                 f"batch {config.batch_size} vs {config.large_batch_size}, {config.epochs:g} epochs, "
                 f"{len(config.seeds)} seed(s)", fontsize=9)
    fig.tight_layout()
    atomic_savefig(fig, path)
    plt.close(fig)
