"""The paper's ImageNet figures for the comparisons the shipped search spaces make.

They are shown only in a side table labelled as published ImageNet results, never on an
axis with proxy accuracies: a proxy's top-1 is not ImageNet's.
"""

from __future__ import annotations

from ccsearch.arch.backbones import PUBLISHED
from ccsearch.madds import exact_madds_label

# search space name -> (setting, published ImageNet top-1) rows (CondConv, Yang et al. 2019,
# and its rebuttal).
PUBLISHED_TOP1: dict[str, list[tuple[str, str]]] = {
    "mnasnet_a1": [
        (f"MnasNet-A1 ({exact_madds_label(PUBLISHED['mnasnet_a1'])} MADDs)", "74.9%"),
        ("MnasNet-A1 + CondConv, 8 experts in groups 6-7 (325M)", "76.2%"),
        ("MnasNet-A2 (340M)", "75.6%"),
    ],
    "mobilenet_v1_routing": [
        ("MobileNetV1 0.25x, 32 experts, ReLU routing", "56%"),
        ("... tanh routing", "60%"),
        ("... sigmoid routing", "62%"),
    ],
    "mobilenet_v1_placement": [
        ("MobileNetV1 0.25x, 32 experts in layer 7 only", "+2% over the baseline"),
        ("... in layer 13 only", "+5% over the baseline"),
    ],
    "mobilenet_v1_se_vs_condconv": [
        ("MobileNetV1 0.25x, squeeze-excite everywhere", "+2% over the baseline"),
        ("... CondConv, 32 experts", "+10% over the baseline"),
        ("... both", "+10.2% over the baseline"),
    ],
    "resnet50_experts": [
        ("ResNet-50, Shake-Shake-style regularization", "77.7%"),
        ("... + CondConv, 8 experts", "78.6%"),
    ],
}


def published_top1(space_name: str) -> list[tuple[str, str]]:
    return PUBLISHED_TOP1.get(space_name, [])
