"""docs/from_neural_tangents.md cannot rot: every snippet pair runs, and the numbers agree.

The guide's fenced blocks are tagged ```` ```python common ````, ```` ```python nt:NAME ```` and
```` ```python gpmargin:NAME compare=a,b rtol=R [measured=M] ````.  For each NAME both blocks run
in fresh namespaces (after ``common`` and that side's ``setup`` block) and every variable in
``compare`` must agree: ``max |gpmargin - nt| <= R * max |nt|``.  ``measured=M`` states the size of a
deliberate difference in the guide's prose; the measured value must then lie within a factor 2 of
M, so the prose stays true.  Without neural-tangents the gpmargin halves still run (and must give
finite numbers); the pairs are skipped with a message naming the missing extra.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import numpy as np
import pytest
import torch

GUIDE = Path(__file__).resolve().parents[1] / "docs" / "from_neural_tangents.md"
_FENCE = re.compile(r"^```python ([^\n]*)\n(.*?)^```\s*$", re.S | re.M)


def parse_guide(text: str) -> dict:
    """{"common": code, "nt": {name: code}, "gpmargin": {name: (code, options)}}."""
    out = {"common": "", "nt": {}, "gpmargin": {}}
    for info, code in _FENCE.findall(text):
        words = info.split()
        if not words:
            continue
        if words[0] == "common":
            out["common"] += code
            continue
        side, _, name = words[0].partition(":")
        if side not in ("nt", "gpmargin") or not name:
            continue
        opts = dict(w.split("=", 1) for w in words[1:])
        assert name not in out[side], f"two {side}:{name} blocks in the guide"
        out[side][name] = code if side == "nt" else (code, opts)
    return out


GUIDE_BLOCKS = parse_guide(GUIDE.read_text())
PAIRS = sorted(n for n in GUIDE_BLOCKS["gpmargin"] if n != "setup")


def _run(side: str, name: str) -> dict:
    ns: dict = {"__name__": f"guide_{side}_{name}"}
    code = GUIDE_BLOCKS[side][name]
    code = code[0] if isinstance(code, tuple) else code
    setup = GUIDE_BLOCKS[side]["setup"]
    setup = setup[0] if isinstance(setup, tuple) else setup
    for part, label in ((GUIDE_BLOCKS["common"], "common"), (setup, f"{side}:setup"), (code, f"{side}:{name}")):
        exec(compile(part, f"{GUIDE.name}[{label}]", "exec"), ns)  # noqa: S102 - the guide's own snippets
    return ns


def _array(v) -> np.ndarray:
    if isinstance(v, torch.Tensor):
        return v.detach().cpu().numpy()
    return np.asarray(v)


def test_guide_blocks_are_well_formed():
    g = GUIDE_BLOCKS
    assert g["common"] and "setup" in g["nt"] and "setup" in g["gpmargin"]
    assert set(g["nt"]) == set(g["gpmargin"]), "every nt:NAME block needs a gpmargin:NAME partner and back"
    for name in PAIRS:
        opts = g["gpmargin"][name][1]
        assert "compare" in opts and "rtol" in opts, f"gpmargin:{name} needs compare= and rtol="
    assert len(PAIRS) >= 9


@pytest.mark.parametrize("name", PAIRS)
def test_guide_gpmargin_snippet_runs(name):
    ns = _run("gpmargin", name)
    for var in GUIDE_BLOCKS["gpmargin"][name][1]["compare"].split(","):
        a = _array(ns[var])
        assert a.dtype == np.float64 and np.isfinite(a).all(), (name, var)


@pytest.fixture(scope="module")
def neural_tangents():
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
    return pytest.importorskip(
        "neural_tangents", reason="neural-tangents not installed (extra 'nt'); skipping the guide's snippet pairs"
    )


@pytest.mark.parametrize("name", PAIRS)
def test_guide_pair_agrees(neural_tangents, name):
    _, opts = GUIDE_BLOCKS["gpmargin"][name]
    ours, theirs = _run("gpmargin", name), _run("nt", name)
    rtol = float(opts["rtol"])
    worst = 0.0
    for var in opts["compare"].split(","):
        a, b = _array(ours[var]), _array(theirs[var])
        assert a.shape == b.shape, (name, var, a.shape, b.shape)
        err = float(np.abs(a - b).max() / np.abs(b).max())
        assert err <= rtol, f"{name}: {var} differs by {err:.3g} relative (guide promises <= {rtol:g})"
        worst = max(worst, err)
    if "measured" in opts:
        stated = float(opts["measured"])
        assert stated / 2 <= worst <= 2 * stated, f"{name}: measured {worst:.3g}, the guide says {stated:g}"


def test_guide_standard_ntk_ratio(neural_tangents):
    """The prose: neural-tangents' standard-parameterisation NTK is 240x (median) gpmargin's NTK for that network."""
    import neural_tangents as nt  # noqa: F401

    ns = _run("nt", "standard")
    theirs = _array(ns["kernel_fn"](ns["x1"], ns["x2"], get="ntk"))
    ours = _array(_run("gpmargin", "standard")["k"](ns["x1"], ns["x2"], get="ntk"))
    ratio = float(np.median(theirs / ours))
    assert 230 < ratio < 250, ratio


def test_guide_gradient_descent_difference_is_the_relu_diagonal(neural_tangents):
    """The prose: with neural-tangents' own kernel_fn (through the bridge) the gradient-descent
    predictions agree to rounding, so the 9.5e-9 of the pair is the kernel's ReLU diagonal."""
    from gpmargin.kernels.nt import from_neural_tangents
    from gpmargin.predict import posterior

    ns = _run("nt", "gradient_descent")
    X1, Y, X2 = (torch.from_numpy(ns[v]) for v in ("x1", "y", "x2"))
    p = posterior(from_neural_tangents(ns["kernel_fn"]), X1, Y, X2, kind="ntk", time=20.0, learning_rate=0.5,
                  joint=True)
    for ours, theirs in ((p.mean, ns["mean_t"]), (p.cov, ns["cov_t"])):
        theirs = _array(theirs)
        assert float(np.abs(_array(ours) - theirs).max() / np.abs(theirs).max()) < 1e-13
