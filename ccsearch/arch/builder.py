"""``build_model(spec)``: the one function that turns an ``ArchSpec`` into a network."""

from __future__ import annotations

import math

import torch
from torch import nn

from ccsearch.arch.blocks import (
    Block,
    Bottleneck,
    ConvBN,
    DepthwiseSeparable,
    InvertedResidual,
)
from ccsearch.arch.spec import ArchSpec, BlockGroup
from ccsearch.layers import CondConv2d, Routing


class CondConvNet(nn.Module):
    """stem -> block groups -> head -> pool -> dropout -> classifier.

    The block groups live in ``self.groups`` (``groups.0`` .. ``groups.{N-1}``) so that
    MADD and parameter counts break down by group, numbered 1..N for users.
    """

    def __init__(self, spec: ArchSpec):
        super().__init__()
        self.spec = spec
        act = spec.activation
        self.stem = nn.Sequential(
            ConvBN(
                spec.in_channels, spec.stem_channels, spec.stem_kernel, spec.stem_stride, act=act
            )
        )
        if spec.stem_pool:
            self.stem.append(nn.MaxPool2d(3, 2, 1))
        channels = spec.stem_channels
        groups = []
        for group in spec.groups:
            blocks = []
            for i in range(group.repeats):
                stride = group.stride if i == 0 else 1
                blocks.append(_make_block(group, channels, stride, act, spec.calibrated_routing))
                channels = group.channels
            groups.append(nn.Sequential(*blocks))
        self.groups = nn.ModuleList(groups)
        if spec.head_channels:
            self.head: nn.Module = ConvBN(channels, spec.head_channels, 1, act=act)
            channels = spec.head_channels
        else:
            self.head = nn.Identity()
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.dropout = nn.Dropout(spec.dropout) if spec.dropout else nn.Identity()
        self.classifier = nn.Linear(channels, spec.num_classes)
        self.num_features = channels
        init_weights(self)

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        for group in self.groups:
            x = group(x)
        return self.head(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.forward_features(x)).flatten(1)  # [B, C]
        return self.classifier(self.dropout(x))  # [B, classes]


def init_weights(model: nn.Module) -> None:
    """timm's ``_init_weight_goog`` (TF's MnasNet/EfficientNet init), plus zero-init residuals.

    Convs and every CondConv expert: normal(0, sqrt(2 / fan_out)) with
    ``fan_out = k * k * out / groups`` (a depthwise kernel's fan-out is its k*k taps, as in
    TF); the classifier normal(0, 0.01) (see below); routing as :class:`Routing` starts
    (bias 0 unless asked otherwise); biases zero.  Zeroing the last batch norm of every
    residual branch starts each block as the identity, which makes the few epochs of a
    proxy run converge far more reliably.  Skipped on the meta device (MADD counting),
    where values do not exist and torch's init functions are slow.
    """
    if any(p.is_meta for p in model.parameters()):
        return
    for module in model.modules():
        if isinstance(module, nn.Conv2d | CondConv2d):
            kh, kw = module.kernel_size
            std = math.sqrt(2 / (kh * kw * module.out_channels // module.groups))
            kernels = module.expert_kernels() if isinstance(module, CondConv2d) else [module.weight]
            for kernel in kernels:  # CondConv: views into the flat [E, params] storage
                nn.init.normal_(kernel, 0, std)
            if module.bias is not None:
                nn.init.zeros_(module.bias)
        elif isinstance(module, Routing):
            module.reset_parameters()
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
        elif isinstance(module, nn.Linear) and module is getattr(model, "classifier", None):
            # Not timm's uniform(+-1/sqrt(classes)): at a proxy's 10 classes that starts
            # 10x larger than at ImageNet's 1000, and MnasNet-A1 + CondConv then reached
            # 55% instead of 91% top-1 in the smoke proxy's 4 epochs.
            nn.init.normal_(module.weight, std=0.01)
            nn.init.zeros_(module.bias)
    for module in model.modules():
        if isinstance(module, Block) and module.has_skip:
            nn.init.zeros_(module.last_bn().weight)


def _make_block(
    group: BlockGroup, in_ch: int, stride: int, act: str, calibrated: bool
) -> nn.Module:
    common = dict(
        in_ch=in_ch,
        out_ch=group.channels,
        kernel=group.kernel,
        stride=stride,
        se=group.se,
        act=act,
        skip=group.skip,
        experts=group.experts,
        routing=group.routing,
        calibrated=calibrated,
    )
    if group.block in ("ds", "dsa"):
        return DepthwiseSeparable(**common, pw_act=group.block == "dsa")
    if group.block == "ir":
        return InvertedResidual(**common, expansion=group.expansion)
    return Bottleneck(**common, expansion=group.expansion)


def build_model(spec: ArchSpec) -> CondConvNet:
    """Build the network a spec describes (weights freshly initialised)."""
    return CondConvNet(spec)
