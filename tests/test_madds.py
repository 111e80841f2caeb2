"""MADD counts against published figures, and nothing a model runs left uncounted."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from ccsearch.arch import build_model, get_backbone
from ccsearch.arch.backbones import PUBLISHED
from ccsearch.errors import UserError
from ccsearch.layers import CondConv2d
from ccsearch.madds import count_madds, exact_madds_label, format_madds, parse_madds

# (backbone, published MADDs, relative tolerance): the papers' own numbers.
PUBLISHED_CASES = [
    ("mnasnet_a1", 312e6, 0.005),
    ("mobilenet_v2", 301e6, 0.005),
    ("mobilenet_v1", 569e6, 0.005),
    ("resnet50", 4.09e9, 0.005),
    ("efficientnet_b0", 391e6, 0.015),  # the paper's 391M counts a little more than conv+linear
]


@pytest.mark.parametrize("name, published, tolerance", PUBLISHED_CASES)
def test_backbone_matches_published_madds(name, published, tolerance):
    report = count_madds(get_backbone(name))
    assert report.convention == "paper"
    assert report.madds == pytest.approx(published, rel=tolerance)
    assert PUBLISHED[name] == pytest.approx(published, rel=0.01)
    parts = report.stem + sum(g.madds for g in report.groups) + report.head
    assert parts == report.madds, "the breakdown adds up to the total"


# Published width variants (paper convention): MobileNetV2 from TF-slim's checkpoint table,
# MobileNetV1 from its paper's Table 6 (TF-slim lists 0.5x as 150M).
WIDTH_CASES = [
    ("mobilenet_v2", 0.75, 209e6),
    ("mobilenet_v2", 0.5, 97e6),
    ("mobilenet_v2", 0.35, 59e6),
    ("mobilenet_v1", 0.5, 149e6),
    ("mobilenet_v1", 0.25, 41e6),
]


@pytest.mark.parametrize("name, width, published", WIDTH_CASES)
def test_width_variants_match_published_madds(name, width, published):
    assert count_madds(get_backbone(name, width)).madds == pytest.approx(published, rel=0.005)


def test_mnasnet_a1_condconv_last_two_groups_matches_paper():
    base = get_backbone("mnasnet_a1")
    report = count_madds(base.with_condconv([6, 7], 8))
    # Independent implementation: 322.2M, of which 10.65M is kernel mixing.
    assert report.madds == pytest.approx(322.2e6, abs=0.05e6)
    assert report.condconv_mixing == pytest.approx(10.65e6, rel=0.001)
    assert 0 < report.routing < 10_000
    # The paper's 325M is 0.9% above our count of its design.
    assert report.madds == pytest.approx(325e6, rel=0.01)
    # The last three groups (TF's EfficientNet-CondConv placement) come closer: 324.3M.
    assert count_madds(base.with_condconv([5, 6, 7], 8)).madds == pytest.approx(324.3e6, abs=0.05e6)


def test_mixing_count_is_experts_times_kernel_size_per_conv():
    spec = get_backbone("mobilenet_v1", 0.25).with_condconv([13], experts=32)
    model = build_model(spec)
    convs = [m for m in model.modules() if isinstance(m, CondConv2d)]
    expected = sum(c.weight.numel() for c in convs)  # E * kernel size, summed
    report = count_madds(model)
    assert report.condconv_mixing == expected
    # Routing FC: 256 inputs -> 32 experts (+ nothing else counted).
    assert report.routing == 256 * 32
    base = count_madds(get_backbone("mobilenet_v1", 0.25))
    assert report.madds == base.madds + expected + 256 * 32


def test_grouped_conv_and_bmm_forms_count_the_same():
    a = nn.Sequential(CondConv2d(32, 64, 1, bias=False, num_experts=4, impl="conv"))
    b = nn.Sequential(CondConv2d(32, 64, 1, bias=False, num_experts=4, impl="bmm"))
    ra = count_madds(a, resolution=32, in_channels=32)
    rb = count_madds(b, resolution=32, in_channels=32)
    assert ra.madds == rb.madds == 32 * 64 * 32 * 32 + 4 * 32 * 64 + 32 * 4


def test_fvcore_convention_adds_batch_norm_and_reports_skipped_ops():
    paper = count_madds(get_backbone("mnasnet_a1"), convention="paper")
    fvcore = count_madds(get_backbone("mnasnet_a1"), convention="fvcore")
    assert 1.02 < fvcore.madds / paper.madds < 1.06  # batch norm and pooling: about +4%
    assert "aten::add" in fvcore.skipped_ops and not paper.skipped_ops


def test_paper_convention_refuses_to_miss_an_op():
    class Odd(nn.Module):
        def forward(self, x):
            return torch.cumsum(nn.functional.conv2d(x, torch.ones(2, 3, 1, 1)), dim=1)

    with pytest.raises(RuntimeError, match="aten::cumsum"):
        count_madds(Odd(), resolution=32)


def test_resolution_scales_counts_and_bad_values_are_refused():
    small = count_madds(get_backbone("mnasnet_a1"), resolution=112)
    full = count_madds(get_backbone("mnasnet_a1"))
    assert small.madds < full.madds / 3
    with pytest.raises(UserError, match="resolution"):
        count_madds(get_backbone("mnasnet_a1"), resolution=0)
    with pytest.raises(UserError, match="convention"):
        count_madds(get_backbone("mnasnet_a1"), convention="flops")


@pytest.mark.parametrize(
    "text, value",
    [
        ("325M", 325_000_000),
        ("0.6G", 600_000_000),
        ("4.1e9", 4_100_000_000),
        ("325000000", 325_000_000),
        ("325m", 325_000_000),
        (" 12k ", 12_000),
        ("325.44M", 325_440_000),
        ("0.1G", 100_000_000),
        ("1.1e3", 1_100),
        (325_000_000, 325_000_000),
        (4.1e9, 4_100_000_000),
    ],
)
def test_parse_madds(text, value):
    assert parse_madds(text) == value


@pytest.mark.parametrize(
    "text", ["", "M", "325X", "-5M", "abc", "nan", "inf", "0", "1e999999999", 0, -3, float("nan")]
)
def test_parse_madds_rejects_bad_strings(text):
    with pytest.raises(UserError, match="MADD"):
        parse_madds(text)


def test_format_madds():
    assert format_madds(325_412_345) == "325.4M"
    assert format_madds(4_089_000_000) == "4.09G"


@pytest.mark.parametrize(
    "text", ["0.4", "300.5", 0.4, "1.5e0", "0.0000004M", "1.0000000000000000000000000001k", "1e-99"]
)
def test_parse_madds_refuses_fractional_counts(text):
    with pytest.raises(UserError, match="not a whole number") as err:
        parse_madds(text)
    assert repr(text) in str(err.value) or str(text) in str(err.value)


def test_parse_madds_suggests_a_unit_for_a_bare_fraction():
    with pytest.raises(UserError, match=r"'0\.4'.*did you mean 0\.4M or 0\.4G\?"):
        parse_madds("0.4")


@pytest.mark.parametrize(
    "value, label",
    [
        (325_000_000, "325M"),
        (325_440_000, "325.44M"),
        (325_410_000, "325.41M"),
        (4_100_000_000, "4.1G"),
        (1_000_000_000_000, "1000G"),
        (1_234, "1.234K"),
        (1_000, "1K"),
        (999, "999"),
        (1, "1"),
        (325_412_345, "325.412345M"),
    ],
)
def test_exact_madds_label(value, label):
    assert exact_madds_label(value) == label
    assert parse_madds(label) == value
