"""The ContinuousConv layer: a kernel MLP over relative offsets, evaluated by pcseg.ops."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import nn

from pcseg.ops.continuous_conv import continuous_conv

KERNELS = ("full", "separable")


class ContinuousConv(nn.Module):
    """Parametric continuous convolution (Wang et al., CVPR 2018).

    For every query i with neighbours j (``idx`` row i, -1 = padding) and offset
    z_ij = query_i - support_j:

    - ``kernel="full"``: out_i = (1/K_i) sum_j feat_j @ kernel_mlp(z_ij).view(C_in, C_out)
    - ``kernel="separable"``: out_i = (1/K_i) sum_j (feat_j @ weight) * kernel_mlp(z_ij)

    (1/K_i only with ``normalize``; K_i = number of valid neighbours; zeros when K_i = 0.)

    Attributes:
        kernel_mlp: nn.Sequential ``Linear(3, h1), ReLU, ..., Linear(h_last, C_in*C_out | C_out)``.
        weight: (C_in, C_out) shared channel-mixing matrix ("separable" only).
        impl: how :func:`pcseg.ops.continuous_conv` evaluates the layer ("auto", "chunked",
            "triton"; a plain attribute, not a parameter: set it on a built model with
            :func:`set_conv_options`; it does not change the numbers beyond rounding).

    Under ``torch.autocast`` the layer returns float32 (sums accumulate in float32).

    The layer is evaluated by :func:`pcseg.ops.continuous_conv`, which never builds the
    M x K x C_in x C_out kernel tensor (see that module for the factorisation).
    """

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_hidden: Sequence[int] = (16, 32),
        kernel: str = "full",
        normalize: bool = True,
        impl: str = "auto",
    ) -> None:
        super().__init__()
        if kernel not in KERNELS:
            raise ValueError(f"kernel must be one of {KERNELS}, got {kernel!r}")
        if in_channels < 1 or out_channels < 1:
            raise ValueError(
                f"in_channels and out_channels must be >= 1, got {in_channels}, {out_channels}"
            )
        self.in_channels, self.out_channels = in_channels, out_channels
        self.kernel, self.normalize = kernel, normalize
        self.kernel_hidden = tuple(int(h) for h in kernel_hidden)
        self.impl = impl
        layers: list[nn.Module] = []
        width = 3
        for h in self.kernel_hidden:
            layers += [nn.Linear(width, h), nn.ReLU()]
            width = h
        emit = in_channels * out_channels if kernel == "full" else out_channels
        layers.append(nn.Linear(width, emit))
        self.kernel_mlp = nn.Sequential(*layers)
        if kernel == "separable":
            self.weight = nn.Parameter(torch.empty(in_channels, out_channels))
        else:
            self.register_parameter("weight", None)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Default Linear init, with the kernel scaled so the output variance ~ the input's.

        full: the last Linear's weight and bias are divided by sqrt(C_in), since each output
        sums C_in products with kernel values. separable: ``weight`` is N(0, 1/C_in) and the
        kernel MLP's last bias starts at 1, so the layer starts close to a mean of feat @ weight.
        """
        for module in self.kernel_mlp:
            if isinstance(module, nn.Linear):
                module.reset_parameters()
        last = self.kernel_mlp[-1]
        if self.kernel == "full":
            with torch.no_grad():
                last.weight.div_(math.sqrt(self.in_channels))
                last.bias.div_(math.sqrt(self.in_channels))
        else:
            nn.init.normal_(self.weight, std=1.0 / math.sqrt(self.in_channels))
            nn.init.ones_(last.bias)

    def forward(
        self, feat: torch.Tensor, support: torch.Tensor, query: torch.Tensor, idx: torch.Tensor
    ) -> torch.Tensor:
        """feat (N, C_in), support (N, 3), query (M, 3), idx (M, K) int64 (-1 padding) -> (M, C_out)."""
        if feat.dim() != 2 or feat.shape[1] != self.in_channels:
            raise ValueError(
                f"feat must have shape (N, C_in={self.in_channels}), got {tuple(feat.shape)}"
            )
        return continuous_conv(
            feat,
            support,
            query,
            idx,
            self.kernel_mlp,
            kernel=self.kernel,
            weight=self.weight,
            normalize=self.normalize,
            impl=self.impl,
        )

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel={self.kernel!r}, "
            f"kernel_hidden={self.kernel_hidden}, normalize={self.normalize}"
        )


def set_conv_options(module: nn.Module, **options: object) -> int:
    """Set ``impl`` on every ContinuousConv inside ``module``.

    Returns how many layers were changed; raises ValueError for another option name.
    """
    unknown = set(options) - {"impl"}
    if unknown:
        raise ValueError(f"unknown ContinuousConv options {sorted(unknown)}")
    layers = [m for m in module.modules() if isinstance(m, ContinuousConv)]
    for layer in layers:
        for name, value in options.items():
            setattr(layer, name, value)
    return len(layers)


def compile_network(net: nn.Module) -> list[str]:
    """``torch.compile`` the plain-PyTorch parts of a network, in place; returns their names.

    Compiled: every direct child that is an ``nn.Sequential`` or marks itself ``compilable``
    (:class:`~pcseg.nn.pccn.ContextHead`) without a ContinuousConv inside (PCCN's ``stem`` and
    ``head``: Linear + BatchNorm + ReLU chains that fuse well). Never the continuous convs
    (their autograd Function evaluates the kernel MLP itself) or the KNN search.
    ``nn.Module.compile`` keeps parameter names, so checkpoints are unchanged.
    """
    names = []
    for name, child in net.named_children():
        if (isinstance(child, nn.Sequential) or getattr(child, "compilable", False)) and not any(
            isinstance(m, ContinuousConv) for m in child.modules()
        ):
            child.compile()
            names.append(name)
    return names
