"""The building blocks a spec's block groups expand to.

In a CondConv block every convolution of the block's main path becomes a
``CondConv2d`` and all of them share one routing function computed from the
block's input (as in the paper's CondConv-MBConv).  Squeeze-excite and ResNet's
projection shortcut stay static.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ccsearch.layers import CondConv2d, Conv2d, Routing

_ACTIVATIONS = {"relu": nn.ReLU, "relu6": nn.ReLU6, "swish": nn.SiLU}


def make_activation(name: str) -> nn.Module:
    return _ACTIVATIONS[name](inplace=True)


class ConvBN(nn.Module):
    """Conv (static or CondConv) + batch norm + optional activation."""

    def __init__(
        self,
        in_ch: int,
        out_ch: int,
        kernel: int,
        stride: int = 1,
        groups: int = 1,
        act: str | None = "relu",
        experts: int = 0,
    ):
        super().__init__()
        padding = kernel // 2
        if experts:
            self.conv: nn.Module = CondConv2d(
                in_ch,
                out_ch,
                kernel,
                stride,
                padding,
                groups=groups,
                bias=False,
                num_experts=experts,
                routing=None,
            )
        else:
            self.conv = Conv2d(in_ch, out_ch, kernel, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_ch)
        self.act = make_activation(act) if act else nn.Identity()

    def forward(self, x: torch.Tensor, routing_weights: torch.Tensor | None = None) -> torch.Tensor:
        x = self.conv(x, routing_weights) if routing_weights is not None else self.conv(x)
        return self.act(self.bn(x))


class SqueezeExcite(nn.Module):
    """Channel gating from pooled features (Hu et al.); reduced width from the block input."""

    def __init__(self, channels: int, reduced: int, act: str):
        super().__init__()
        self.reduce = Conv2d(channels, reduced, 1)  # a matmul on the pooled pixel
        self.act = make_activation(act)
        self.expand = Conv2d(reduced, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        s = F.adaptive_avg_pool2d(x, 1)  # [B, C, 1, 1]
        s = self.expand(self.act(self.reduce(s)))
        return x * torch.sigmoid(s)


class Block(nn.Module):
    """Base: optional shared routing, a main path of ``ConvBN`` layers, optional residual."""

    drop_connect: float = 0.0  # chance of dropping the residual branch per example in training

    def __init__(self, in_ch: int, experts: int, routing: str, calibrated: bool = False):
        super().__init__()
        self.routing = Routing(in_ch, experts, routing, calibrated=calibrated) if experts else None

    def route(self, x: torch.Tensor) -> torch.Tensor | None:
        return self.routing(x) if self.routing is not None else None

    def add_skip(self, out: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        """``out + skip``, with TF's drop-connect on ``out`` while training: each example
        keeps its residual branch with probability 1 - drop_connect, rescaled to keep the
        expectation (stochastic depth)."""
        if self.training and self.drop_connect > 0:
            keep = 1.0 - self.drop_connect
            mask = torch.rand(out.shape[0], 1, 1, 1, device=out.device, dtype=out.dtype) < keep
            out = out * mask / keep
        return out + skip

    def last_bn(self) -> nn.BatchNorm2d:
        """The batch norm that ends the residual branch."""
        raise NotImplementedError


class DepthwiseSeparable(Block):
    """Depthwise kxk -> [SE] -> pointwise 1x1 (MobileNetV1 ``dsa``; MnasNet/EfficientNet ``ds``)."""

    def __init__(self, in_ch, out_ch, kernel, stride, se, act, pw_act, skip, experts, routing,
                 calibrated=False):
        super().__init__(in_ch, experts, routing, calibrated)
        self.dw = ConvBN(in_ch, in_ch, kernel, stride, groups=in_ch, act=act, experts=experts)
        self.se = SqueezeExcite(in_ch, max(1, int(in_ch * se)), act) if se else nn.Identity()
        self.pw = ConvBN(in_ch, out_ch, 1, act=act if pw_act else None, experts=experts)
        self.has_skip = skip and stride == 1 and in_ch == out_ch

    def last_bn(self) -> nn.BatchNorm2d:
        return self.pw.bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.route(x)
        out = self.pw(self.se(self.dw(x, r)), r)
        return self.add_skip(out, x) if self.has_skip else out


class InvertedResidual(Block):
    """MBConv: expand 1x1 -> depthwise kxk -> [SE] -> linear project 1x1 (MobileNetV2, MnasNet)."""

    def __init__(self, in_ch, out_ch, kernel, stride, expansion, se, act, skip, experts, routing,
                 calibrated=False):
        super().__init__(in_ch, experts, routing, calibrated)
        mid = int(round(in_ch * expansion))
        self.expand = ConvBN(in_ch, mid, 1, act=act, experts=experts) if mid != in_ch else None
        self.dw = ConvBN(mid, mid, kernel, stride, groups=mid, act=act, experts=experts)
        self.se = SqueezeExcite(mid, max(1, int(in_ch * se)), act) if se else nn.Identity()
        self.project = ConvBN(mid, out_ch, 1, act=None, experts=experts)
        self.has_skip = skip and stride == 1 and in_ch == out_ch

    def last_bn(self) -> nn.BatchNorm2d:
        return self.project.bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.route(x)
        out = self.expand(x, r) if self.expand is not None else x
        out = self.project(self.se(self.dw(out, r)), r)
        return self.add_skip(out, x) if self.has_skip else out


class Bottleneck(Block):
    """ResNet v1.5 bottleneck: 1x1 -> 3x3 (stride here) -> 1x1, out = mid * expansion."""

    def __init__(self, in_ch, out_ch, kernel, stride, expansion, se, act, skip, experts, routing,
                 calibrated=False):
        super().__init__(in_ch, experts, routing, calibrated)
        mid = int(round(out_ch / expansion))
        self.conv1 = ConvBN(in_ch, mid, 1, act=act, experts=experts)
        self.conv2 = ConvBN(mid, mid, kernel, stride, act=act, experts=experts)
        self.conv3 = ConvBN(mid, out_ch, 1, act=None, experts=experts)
        self.se = SqueezeExcite(out_ch, max(1, int(in_ch * se)), act) if se else nn.Identity()
        needs_projection = stride != 1 or in_ch != out_ch
        self.shortcut = ConvBN(in_ch, out_ch, 1, stride, act=None) if needs_projection else None
        self.has_skip = skip
        self.act = make_activation(act)

    def last_bn(self) -> nn.BatchNorm2d:
        return self.conv3.bn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        r = self.route(x)
        out = self.se(self.conv3(self.conv2(self.conv1(x, r), r), r))
        if self.has_skip:
            out = self.add_skip(out, self.shortcut(x) if self.shortcut is not None else x)
        return self.act(out)
