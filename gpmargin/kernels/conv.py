"""Convolutions in the NTK parameterisation (neural-tangents' ``stax.Conv``): ``Conv2d`` for
images ``(N, C, H, W)``, ``Conv1d`` for sequences ``(N, C, L)``; their kernel maps and finite
modules.  The window geometry (padding, output sizes, filter averages) is
:class:`gpmargin.kernels.window.Window`'s."""

from __future__ import annotations

import torch.nn.functional as F

from gpmargin.kernels.base import hyperparameter
from gpmargin.kernels.dense import Affine
from gpmargin.kernels.finite import AffineModule, Flow
from gpmargin.kernels.state import Spec
from gpmargin.kernels.window import Window, parse_padding, window_tuple


class ConvModule(AffineModule):
    """Finite ``Conv2d``: weights ``(k, out, C, k_h, k_w)``; all members in one convolution
    (ungrouped on the shared input, ``groups = k`` on per-member channel groups)."""

    def forward(self, fl: Flow) -> Flow:
        w = self.stacked_weight()
        k, o = w.shape[:2]
        x = self.layer.pad(fl.h)
        groups = 1 if fl.layout == "shared" else k
        weight = w.reshape(k * o, *w.shape[2:])
        b = self.stacked_bias()
        stride = self.layer.steps
        if b is None:
            h = F.conv2d(x, weight, None, stride, groups=groups)
            return Flow(h, "image", k, fl.times(self.w_mult), True)
        alpha = fl.scale() * self.w_mult
        bias = b.reshape(k * o)
        h = F.conv2d(x, weight * alpha if alpha != 1.0 else weight, bias * self.b_mult if self.b_mult != 1.0 else bias,
                     stride, groups=groups)
        return Flow(h, "image", k, {}, True)


class Conv2d(Window, Affine):
    r"""Convolution ``f_p = W_std / sqrt(C k_h k_w) * sum_{c,a} W_{c,a} x_{c, s p + a} + b_std * b``.

    Channels-agnostic (infinite output channels; the input channel count only enters through
    the fan-in).  ``padding`` is ``"valid"``, ``"same"`` (zeros; neural-tangents/XLA convention:
    total padding ``max((out-1) s + k - in, 0)``, the smaller half before) or ``"circular"``
    (the same sizes, periodic: the image is a torus).  With the filter average
    :math:`\mathcal{A}[K]_{p,p'} = \frac{1}{k_h k_w} \sum_a K_{s p + a,\, s p' + a}` over the
    padded kernel (zero padding counts as zeros; circular padding wraps both positions,
    :math:`K_{q \bmod (H, W),\, q' \bmod (H, W)}`):

    .. math::
        \Sigma_{out} = W_{std}^2 \mathcal{A}[\Sigma_{in}] + b_{std}^2, \qquad
        \Theta_{out} = W_{std}^2 \mathcal{A}[\Theta_{in}] + \Sigma_{out}.

    The input kernel of images is :math:`\Sigma_{p,p'} = \frac1C \sum_c x_{c,p} x'_{c,p'}`.
    """

    def __init__(self, kernel_size, stride=1, padding: str = "valid", W_std: float = 1.0, b_std: float | None = None):
        name = type(self).__name__
        self.kernel_size = window_tuple(kernel_size, name, "kernel_size")
        self.stride = window_tuple(stride, name, "stride")
        self.padding = parse_padding(padding, name)
        self.W_std = hyperparameter(W_std, "W_std", name)
        self.b_std = None if b_std is None else hyperparameter(b_std, "b_std", name)

    # -- geometry (see Window) ----------------------------------------------------------
    @property
    def window(self) -> tuple[int, int]:
        return self.kernel_size

    @property
    def steps(self) -> tuple[int, int]:
        return self.stride

    def out_spec(self, spec: Spec) -> Spec:
        if spec.kind != "image":
            raise self.fail(spec, "a convolution needs images of shape (N, C, H, W)")
        oh, ow = self.out_size(spec, f"{self.kernel_size} filter")
        return Spec("image", (None, oh, ow))

    def fan_in(self, spec: Spec) -> int | None:
        c = spec.shape[0]
        return None if c is None else c * self.window[0] * self.window[1]

    def weight_shape(self, in_shape, units):
        return (units, in_shape[0], *self.window)

    module_class = ConvModule


class Conv1d(Conv2d):
    r"""1-D convolution of sequences ``(N, C, L)``: ``f_t = W_std / sqrt(C k) * sum_{c,a} W_{c,a}
    x_{c, s t + a} + b_std * b`` (neural-tangents' ``stax.Conv`` with a 1-tuple filter on
    ``(N, L, C)`` inputs).

    A sequence is an image of height 1 (inputs ``(N, C, L)`` are taken as ``(N, C, 1, L)``), and
    ``Conv1d(k, s)`` is the ``Conv2d`` with window ``(1, k)`` and strides ``(1, s)``: the same
    maps, :math:`\mathcal{A}[K]_{t,t'} = \frac1k \sum_a K_{st+a,\, st'+a}` (padding as in
    ``Conv2d``).  Its finite weights are ``(k, out, C, 1, k)``.
    """

    def __init__(self, kernel_size, stride=1, padding: str = "valid", W_std: float = 1.0, b_std: float | None = None):
        self.kernel_size = window_tuple(kernel_size, "Conv1d", "kernel_size", 1)[0]
        self.stride = window_tuple(stride, "Conv1d", "stride", 1)[0]
        self.padding = parse_padding(padding, "Conv1d")
        self.W_std = hyperparameter(W_std, "W_std", "Conv1d")
        self.b_std = None if b_std is None else hyperparameter(b_std, "b_std", "Conv1d")

    @property
    def window(self) -> tuple[int, int]:
        return (1, self.kernel_size)

    @property
    def steps(self) -> tuple[int, int]:
        return (1, self.stride)

    def out_spec(self, spec: Spec) -> Spec:
        if spec.kind != "image" or spec.shape[1] != 1:
            raise self.fail(spec, "a 1-D convolution needs sequences of shape (N, C, L)")
        oh, ow = self.out_size(spec, f"length-{self.kernel_size} filter")
        return Spec("image", (None, oh, ow))
