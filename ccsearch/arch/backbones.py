"""The shipped backbones, each an ``ArchSpec`` written as timm-style block strings.

Their published MADDs at 224x224, 1000 classes, are tabled once, in ``PUBLISHED`` below;
``tests/test_madds.py`` checks every backbone's count against it.
"""

from __future__ import annotations

from collections.abc import Callable

from ccsearch.arch.spec import ArchSpec, BlockGroup
from ccsearch.errors import UserError


def _spec(name: str, groups: list[str], **kwargs) -> ArchSpec:
    return ArchSpec(name=name, groups=tuple(BlockGroup.from_string(g) for g in groups), **kwargs)


def mnasnet_a1() -> ArchSpec:
    """MnasNet-A1 (Tan et al., 2019): 7 block groups, SE in groups 3, 5, 6."""
    return _spec(
        "mnasnet_a1",
        [
            "ds_r1_k3_s1_e1_c16_noskip",
            "ir_r2_k3_s2_e6_c24",
            "ir_r3_k5_s2_e3_c40_se0.25",
            "ir_r4_k3_s2_e6_c80",
            "ir_r2_k3_s1_e6_c112_se0.25",
            "ir_r3_k5_s2_e6_c160_se0.25",
            "ir_r1_k3_s1_e6_c320",
        ],
        stem_channels=32,
        head_channels=1280,
        head_scaling="fixed",  # TF's MnasNet keeps the head at 1280 at every width
        activation="relu",
    )


def mobilenet_v1() -> ArchSpec:
    """MobileNetV1 1.0 (Howard et al., 2017): 13 depthwise-separable layers, one group each."""
    layers = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2)]
    layers += [(512, 1)] * 5 + [(1024, 2), (1024, 1)]
    return _spec(
        "mobilenet_v1",
        [f"dsa_r1_k3_s{s}_e1_c{c}_noskip" for c, s in layers],
        stem_channels=32,
        head_channels=0,
        activation="relu",
        dropout=0.0,
    )


def mobilenet_v2() -> ArchSpec:
    """MobileNetV2 1.0 (Sandler et al., 2018)."""
    return _spec(
        "mobilenet_v2",
        [
            "ir_r1_k3_s1_e1_c16",
            "ir_r2_k3_s2_e6_c24",
            "ir_r3_k3_s2_e6_c32",
            "ir_r4_k3_s2_e6_c64",
            "ir_r3_k3_s1_e6_c96",
            "ir_r3_k3_s2_e6_c160",
            "ir_r1_k3_s1_e6_c320",
        ],
        stem_channels=32,
        head_channels=1280,
        head_scaling="at_least",  # max(1280, 1280 * width), as in timm and TF-slim
        activation="relu6",
    )


def efficientnet_b0() -> ArchSpec:
    """EfficientNet-B0 (Tan & Le, 2019): MBConv with SE 0.25 and swish everywhere."""
    return _spec(
        "efficientnet_b0",
        [
            "ds_r1_k3_s1_e1_c16_se0.25",
            "ir_r2_k3_s2_e6_c24_se0.25",
            "ir_r2_k5_s2_e6_c40_se0.25",
            "ir_r3_k3_s2_e6_c80_se0.25",
            "ir_r3_k5_s1_e6_c112_se0.25",
            "ir_r4_k5_s2_e6_c192_se0.25",
            "ir_r1_k3_s1_e6_c320_se0.25",
        ],
        stem_channels=32,
        head_channels=1280,
        head_scaling="scaled",  # round_filters(1280), as every other layer
        activation="swish",
    )


def resnet50() -> ArchSpec:
    """ResNet-50 v1.5 (He et al., 2016; stride on the 3x3 conv as in torchvision)."""
    return _spec(
        "resnet50",
        [
            "bottleneck_r3_k3_s1_e4_c256",
            "bottleneck_r4_k3_s2_e4_c512",
            "bottleneck_r6_k3_s2_e4_c1024",
            "bottleneck_r3_k3_s2_e4_c2048",
        ],
        stem_channels=64,
        stem_kernel=7,
        stem_pool=True,
        head_channels=0,
        activation="relu",
        dropout=0.0,
    )


BACKBONES: dict[str, Callable[[], ArchSpec]] = {
    "mnasnet_a1": mnasnet_a1,
    "mobilenet_v1": mobilenet_v1,
    "mobilenet_v2": mobilenet_v2,
    "efficientnet_b0": efficientnet_b0,
    "resnet50": resnet50,
}


def get_backbone(name: str, width: float = 1.0) -> ArchSpec:
    """A shipped backbone by name, optionally with a width multiplier."""
    key = name.lower().replace("-", "_") if isinstance(name, str) else None
    if key not in BACKBONES:
        raise UserError(f"unknown backbone {name!r}; shipped: {', '.join(BACKBONES)}")
    return BACKBONES[key]().scale_width(width)


# Published MADDs at 224x224, 1000 classes: the one table of them (``ccsearch backbones``,
# the dashboard's published side table and the tests read it).  MobileNetV2 and
# EfficientNet-B0 are also quoted as 300M and 390M (0.39B): rounded forms of these.
PUBLISHED: dict[str, int] = {
    "mnasnet_a1": 312_000_000,
    "mobilenet_v1": 569_000_000,
    "mobilenet_v2": 301_000_000,
    "efficientnet_b0": 391_000_000,
    "resnet50": 4_090_000_000,
}
