"""``gpmargin predict``: predicted test accuracy against margin for a dataset, task and architecture.

Writes ``DIR/curve.csv`` (one row per margin and ensemble size), ``DIR/curve.json``
(the whole curve, configuration, versions, device, timings per stage, jitter) and
``DIR/curve.png``.  With no ``--dataset`` it uses scikit-learn's bundled digits
(whole 1,000-image train and 797-image test split), so it runs anywhere.

Heavy imports (torch, the kernels, matplotlib) happen inside :func:`run`, so that
``gpmargin --help`` stays fast.
"""

from __future__ import annotations

import argparse
import math
import sys
import time

from gpmargin.io import path_argument

DEFAULT_ENSEMBLE = "1,2,4,8,16"
ARCHS = ("paper-mlp", "paper-cnn", "wide-resnet", "myrtle")
IMAGE_ARCHS = ("paper-cnn", "wide-resnet", "myrtle")  # take images, not flattened vectors
_DEFAULT_DEPTH = {"paper-mlp": 5, "paper-cnn": 4, "wide-resnet": 16, "myrtle": 5}


def register(subparsers) -> None:
    """Add the ``predict`` subcommand."""
    p = subparsers.add_parser(
        "predict",
        help="predict test accuracy against margin with the GP model",
        description=(
            "Condition the NNGP (or NTK-GP) on f(train) = alpha * labels and write the predicted test "
            "accuracy of networks trained to each margin alpha (single networks and ensemble averages)."
        ),
    )
    add_task_arguments(p)
    add_arch_arguments(p)
    p.add_argument("--kind", default="nngp", choices=("nngp", "ntk", "ntkgp"),
                   help="prediction: nngp (default, the paper's NNGP posterior), ntk (networks trained by gradient "
                        "descent on the squared error, Lee et al. 2019) or ntkgp (a GP with the NTK as covariance)")
    p.add_argument("--time", default=None, type=_float_arg("--time"),
                   help="training time for --kind ntk or nngp (readout-only gradient flow), scaled as "
                        "neural-tangents' gradient_descent_mse_ensemble; default: trained to convergence")
    p.add_argument("--lr", default=1.0, type=_float_arg("--lr"),
                   help="gradient-descent learning rate (multiplies --time; default 1.0)")
    p.add_argument("--margins", default="auto",
                   help="LO:HI:N (N log-spaced margins), a comma list, or auto (default: chance to limit)")
    p.add_argument("--ensemble", default=DEFAULT_ENSEMBLE,
                   help=f"ensemble sizes, comma list (default {DEFAULT_ENSEMBLE})")
    p.add_argument("--device", default="auto", choices=("cpu", "cuda", "auto"), help="compute device (default auto)")
    p.add_argument("--threads", default="auto",
                   help="CPU threads for torch: a number, or auto (default: the cores not busy according to "
                        "the 1-minute load average, at least 1)")
    p.add_argument("--per-example", action="store_true",
                   help="also save per-test-point probabilities, means and stds in curve.json")
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    p.add_argument("--kernel-store", default=None, metavar="STORE", type=path_argument,
                   help="reuse the kernel matrices of `gpmargin kernel --out STORE` (same data, task, sizes, seed and "
                        "architecture) and solve out of core; the Cholesky factor is kept in the store for the next run")
    p.add_argument("--memory", type=float, default=8.0, metavar="GIB",
                   help="working memory of the out-of-core solves with --kernel-store, GiB (default 8)")
    p.add_argument("--fit-hyperparameters", action="store_true",
                   help="first fit the weight and bias variances (every affine layer given a bias) by the marginal "
                        "likelihood of the training labels, then draw the curve with them; the fitted values go to "
                        "curve.json")
    p.add_argument("--fit-sharing", default="shared", choices=("shared", "per-layer"),
                   help="with --fit-hyperparameters: one weight and one bias variance (default) or one per layer")
    p.add_argument("--out", required=True, metavar="DIR", type=path_argument, help="output folder")
    p.set_defaults(func=run)


def add_task_arguments(p) -> None:
    """The data options shared by ``gpmargin predict`` and ``gpmargin kernel`` (read by :func:`load_task`)."""
    p.add_argument("--dataset", default=None,
                   help="digits (default, bundled), mnist, fashion_mnist or cifar10")
    p.add_argument("--task", default="parity", help="parity (default), pair:A,B (e.g. pair:3,8) or multiclass")
    p.add_argument("--n-train", type=int, default=None,
                   help="training examples (default: digits' whole train split, else 1000)")
    p.add_argument("--n-test", type=int, default=None,
                   help="test examples (default: every remaining / available test example)")
    p.add_argument("--seed", type=int, default=0, help="seed of the train/test subsets (default 0)")
    p.add_argument("--data-root", default=None, type=path_argument, help="extra folder searched first for dataset files")


def add_arch_arguments(p) -> None:
    """The architecture options shared by ``gpmargin predict`` and ``gpmargin kernel`` (see :func:`kernel_from_args`)."""
    p.add_argument("--arch", default="paper-mlp", choices=ARCHS, help="architecture (default paper-mlp)")
    p.add_argument("--depth", type=int, default=None,
                   help="weight layers: paper-mlp weight matrices (default 5); paper-cnn 2 conv + dense "
                        "layers (>= 3, default 4); wide-resnet 6n+4 (default 16, WRN-16); myrtle 5, 7 or 10 (default 5)")
    p.add_argument("--constrained", action="store_true", help="use the exact kernel of Nero-constrained networks (zero-mean, unit-norm weight rows) "
                        "instead of the paper's Gaussian kernel")


def _float_arg(flag: str):
    """argparse type: a float; the range is checked by gpmargin.predict.inputs (one message for API and CLI)."""

    def parse(text: str) -> float:
        try:
            return float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{flag} takes a number, got {text!r}") from None

    return parse


def _busy_elsewhere() -> float | None:
    """How many threads other processes are running now: on Linux the runnable count of
    ``/proc/loadavg`` less this process's own; elsewhere the 1-minute load average (which
    still counts, decayed, processes that finished up to a minute ago)."""
    import os

    try:
        with open("/proc/loadavg") as f:
            return max(0, int(f.read().split()[3].split("/")[0]) - 1)
    except (OSError, IndexError, ValueError):
        pass
    try:
        return os.getloadavg()[0]
    except (OSError, AttributeError):
        return None


def _threads(spec: str) -> int:
    """Torch CPU threads.  ``auto``: the cores not running other processes' threads now
    (:func:`_busy_elsewhere`, rounded, >= 1).

    With more busy processes than cores, OpenMP parallel regions stall waiting for a
    descheduled thread (measured here: a depth-5 MLP kernel ran 10-50x slower on 2 threads
    than on 1 while other jobs used the cores), so fewer threads are faster then.  The
    1-minute load average used before also counted processes that had just ended: right after
    another job, the predict benchmark's case B ran on 1 of 2 idle cores (its Cholesky 11.9 s
    instead of 5.3 s).
    """
    import os

    import torch

    from gpmargin.errors import GpmarginError

    if spec != "auto":
        try:
            n = int(spec)
        except ValueError:
            n = 0
        if n < 1:
            raise GpmarginError(f"--threads {spec!r}: give a positive integer or auto")
        return n
    n = torch.get_num_threads()
    busy = _busy_elsewhere()
    if busy is None:
        return n
    return max(1, min(n, int((os.cpu_count() or n) - busy + 0.5)))


def kernel_from_args(args):
    """The kernel object of ``--arch``, ``--depth``, ``--constrained``."""
    from gpmargin import kernels
    from gpmargin.errors import GpmarginError

    if args.arch == "paper-mlp":
        if args.depth < 1:
            raise GpmarginError(f"--depth must be at least 1 for paper-mlp, got {args.depth}")
        return kernels.paper_mlp(args.depth, constrained=args.constrained)
    if args.arch in ("wide-resnet", "myrtle"):
        if args.constrained:
            raise GpmarginError(f"--constrained: the Nero-constrained kernel exists for paper-mlp and paper-cnn, not {args.arch}")
        try:
            return kernels.wide_resnet(args.depth) if args.arch == "wide-resnet" else kernels.myrtle(args.depth)
        except GpmarginError as exc:
            raise GpmarginError(f"--depth {args.depth}: {exc}") from None
    if args.depth < 3:
        raise GpmarginError(f"--depth for paper-cnn counts 2 conv layers plus >= 1 dense layer: at least 3, got {args.depth}")
    return kernels.paper_cnn(args.depth, constrained=args.constrained)


def load_task(args):
    """The task of ``--dataset``, ``--task``, ``--n-train``, ``--n-test``, ``--seed``, ``--data-root``
    (flattened for paper-mlp); also fills ``args.depth`` when unset."""
    from gpmargin.errors import GpmarginError

    if args.depth is None:
        args.depth = _DEFAULT_DEPTH[args.arch]
    dataset = (args.dataset or "digits").lower()
    from gpmargin.data import make_task

    n_train = args.n_train if args.n_train is not None else _default_n_train(dataset, args.task, args.data_root)
    task = make_task(
        dataset,
        args.task,
        n_train=n_train,
        n_test=args.n_test,
        seed=args.seed,
        flatten=args.arch not in IMAGE_ARCHS,
        root=args.data_root,
    )

    if args.arch == "paper-cnn" and min(task.x_train.shape[-2:]) < 9:
        raise GpmarginError(
            f"paper-cnn has two 5x5 'valid' convolutions and needs images of at least 9x9 pixels; "
            f"{dataset} images are {task.x_train.shape[-2]}x{task.x_train.shape[-1]}: use --dataset mnist "
            f"(or fashion_mnist, cifar10) or --arch paper-mlp"
        )
    return task


def _store_options(args) -> dict:
    """``kernel_store`` (the store opened) and ``memory`` for :func:`~gpmargin.predict.margin_curve`
    (none without --kernel-store).  The command line is where a store's path is opened: the
    prediction itself only needs the store's ``kernel_source`` interface."""
    if not args.kernel_store:
        return {}
    from gpmargin.distributed.store import open_store
    from gpmargin.errors import GpmarginError

    if not (math.isfinite(args.memory) and args.memory > 0):
        raise GpmarginError(f"--memory must be a positive, finite number of GiB, got {args.memory:g}")
    return {"kernel_store": open_store(args.kernel_store), "memory": int(args.memory * 2**30)}


def _default_n_train(dataset: str, task: str, root) -> int:
    """Digits: its whole train split (for pair:A,B, every training image of the two classes)."""
    if dataset != "digits":
        return 1000
    from gpmargin.data import DIGITS_N_TRAIN, load, parse_task

    kind, a, b = parse_task(task)
    if kind != "pair":
        return DIGITS_N_TRAIN
    _, y = load("digits", "train", root=root)
    return int(((y == a) | (y == b)).sum())


def keeping_torch_threads(body):
    """``body(args)`` run with torch's thread count restored afterwards (the CLIs set it from
    ``--threads``; a caller in the same process keeps its own)."""

    def run(args: argparse.Namespace) -> int:
        import torch

        threads_before = torch.get_num_threads()
        try:
            return body(args)
        finally:
            torch.set_num_threads(threads_before)

    run.__doc__ = body.__doc__
    return run


def _import_pyplot() -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot  # noqa: F401


def _run(args: argparse.Namespace) -> int:
    t_start = time.perf_counter()
    import threading
    import warnings

    threads = _threads(args.threads)  # before the second thread below, which would count as busy
    # matplotlib (about a second to import) is loaded on a second thread while the kernels and
    # solves run, which spend their time in torch with the GIL released; the figure waits for it
    plotting = threading.Thread(target=_import_pyplot, name="import matplotlib", daemon=True)
    plotting.start()

    import torch

    from gpmargin.errors import GpmarginError
    from gpmargin.io import check_output_folder, resolve_device

    from gpmargin.predict.inputs import parse_ensemble, parse_margins

    margins = parse_margins(args.margins)  # sorted, checked, capped
    ensemble = parse_ensemble(args.ensemble)
    if args.seed < 0:
        raise GpmarginError(f"--seed must be a non-negative integer, got {args.seed}")
    if args.data_root is not None:
        from gpmargin.data.locate import check_root

        check_root(args.data_root, "--data-root")
    device = resolve_device(args.device)
    check_output_folder(args.out)  # before any work: a bad --out fails in one line, not after the curve
    torch.set_num_threads(threads)
    dataset = (args.dataset or "digits").lower()
    timings: dict[str, float] = {}
    notes: list[str] = []

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        t0 = time.perf_counter()
        task = load_task(args)
        timings["data"] = time.perf_counter() - t0
        for w in caught:
            notes.append(str(w.message))
        caught.clear()

        kernel = kernel_from_args(args)
        fit = None
        if args.fit_hyperparameters:
            if args.kernel_store:
                raise GpmarginError("--fit-hyperparameters cannot be used with --kernel-store: the stored kernel "
                                    "has fixed variances (fit in memory, or store the fitted kernel)")
            from gpmargin.predict.fit import fit_variances

            t0 = time.perf_counter()
            fit = fit_variances(kernel, task.x_train.to(device), task.y_train.to(device),
                                sharing=args.fit_sharing.replace("-", "_"), get="nngp" if args.kind == "nngp" else "ntk")
            kernel = fit.kernel
            timings["fit"] = time.perf_counter() - t0
        from gpmargin.predict.predictor import margin_curve

        curve = margin_curve(
            kernel,
            task.x_train.to(device),
            task.y_train.to(device),
            task.x_test.to(device),
            task.y_test.to(device),
            margins,
            ensemble,
            kind=args.kind,
            time=args.time,
            learning_rate=args.lr,
            num_classes=task.num_classes if task.num_classes > 2 else None,
            progress=not args.no_progress,
            **_store_options(args),
        )
        for w in caught:
            notes.append(str(w.message))
    for msg in notes:
        print(f"warning: {msg}", file=sys.stderr)

    from gpmargin.predict.margin_grid import margin_at_fraction

    arch = f"{args.arch} depth {args.depth}" + (" constrained" if args.constrained else "")
    config = {
        "dataset": dataset,
        "task": args.task,
        "n_train": int(task.x_train.shape[0]),
        "n_test": int(task.x_test.shape[0]),
        "arch": args.arch,
        "depth": args.depth,
        "constrained": bool(args.constrained),
        "kind": args.kind,
        "time": args.time,
        "learning_rate": args.lr,
        "margins": args.margins,
        "ensemble": list(ensemble),
        "seed": args.seed,
        "device": str(device),
        "threads": torch.get_num_threads(),
    }
    if args.kernel_store:
        config["kernel_store"] = str(args.kernel_store)
    if fit is not None:
        config["fitted_hyperparameters"] = fit.summary()
    curve.info.update({"data": task.info, "warnings": notes})
    timings.update(curve.timings)

    from gpmargin.io import atomic_savefig, run_metadata
    from pathlib import Path

    out = Path(args.out)
    t0 = time.perf_counter()
    csv_path = curve.to_csv(out / "curve.csv")
    plotting.join()
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.4, 4.4))
    when = "" if args.time is None else f", t={args.time:g}, lr={args.lr:g}"
    title = (f"{dataset} {args.task}, {arch} ({args.kind.upper()}{when}), "
             f"n_train={config['n_train']}, n_test={config['n_test']}")
    if task.info.get("carved_from"):
        title += f"\n(train and test carved from the {task.info['carved_from']} split)"
    curve.plot(ax=ax, title=title)
    png_path = atomic_savefig(fig, out / "curve.png")
    plt.close(fig)
    timings["write"] = time.perf_counter() - t0
    timings["total"] = time.perf_counter() - t_start
    curve.timings = timings
    json_path = curve.to_json(
        out / "curve.json",
        per_example=args.per_example,
        config=config,
        metadata=run_metadata(device),
    )

    half = margin_at_fraction(curve, 0.5, ensemble=ensemble[0])
    half_s = f"{half:.4g}" if math.isfinite(half) else "not reached inside the margin range"
    print(title.replace("\n", " "))
    what = "kernel interpolator" if args.time is None else f"sign of the mean at time {args.time:g}"
    print(f"  limit accuracy (alpha -> inf, {what}): {curve.limit_accuracy:.4f}   chance: {curve.chance:.3g}")
    if curve.rises_above_chance:
        print(f"  margin at half-way from chance to limit (ensemble {ensemble[0]}): {half_s}")
    else:
        print(f"  no half-way margin: {curve.not_above_chance_note()}")
    print(f"  accuracy at the largest margin, {curve.margins[-1]:.3g}: "
          + ", ".join(f"k={k}: {curve.accuracy[j, -1]:.4f}" for j, k in enumerate(ensemble)))
    if curve.train_accuracy is not None and args.time is not None:
        print(f"  predicted train accuracy at time {args.time:g} (largest margin): "
              + ", ".join(f"k={k}: {curve.train_accuracy[j, -1]:.4f}" for j, k in enumerate(ensemble)))
    if fit is not None:
        print(f"  fitted variances ({fit.sharing}): weight {', '.join(f'{v:.4g}' for v in fit.weight_var)}; bias "
              f"{', '.join(f'{v:.4g}' for v in fit.bias_var) or 'none'}; noise {fit.noise:.3g}; log marginal "
              f"likelihood per label {fit.initial_log_marginal_likelihood:.4f} -> {fit.log_marginal_likelihood:.4f}")
    if curve.jitter:
        print(f"  jitter added to the training kernel: {curve.jitter:.3g}")
    print(f"  wrote {csv_path.name}, {json_path.name}, {png_path.name} in {out}/  ({timings['total']:.1f} s)")
    return 0


run = keeping_torch_threads(_run)
run.__doc__ = "Run ``gpmargin predict`` (torch's thread count is restored afterwards)."
