"""ArchSpec round trips, validation, CondConv placement and the model builder."""

from __future__ import annotations

import json
import math
from dataclasses import replace

import pytest
import torch

from ccsearch.arch import BACKBONES, ArchSpec, BlockGroup, build_model, get_backbone, spec_digest
from ccsearch.arch.blocks import Block
from ccsearch.errors import UserError
from ccsearch.layers import ROUTING_ACTIVATIONS, CondConv2d

# Published parameter counts (millions) of the reference implementations.
PUBLISHED_PARAMS_M = {
    "mnasnet_a1": 3.9,
    "mobilenet_v1": 4.2,
    "mobilenet_v2": 3.5,
    "efficientnet_b0": 5.3,
    "resnet50": 25.6,
}


@pytest.mark.parametrize("name", BACKBONES)
def test_backbone_builds_runs_and_has_published_params(name):
    model = build_model(get_backbone(name)).eval()
    params = sum(p.numel() for p in model.parameters()) / 1e6
    assert params == pytest.approx(PUBLISHED_PARAMS_M[name], abs=0.05)
    with torch.no_grad():
        assert model(torch.randn(2, 3, 64, 64)).shape == (2, 1000)


@pytest.mark.parametrize("name", BACKBONES)
def test_spec_json_round_trip(name, tmp_path):
    spec = get_backbone(name).with_condconv([1, len(get_backbone(name).groups)], 4, "softmax")
    again = ArchSpec.from_json(spec.to_json())
    assert again == spec
    assert json.loads(again.to_json()) == json.loads(spec.to_json())
    path = tmp_path / "spec.json"
    spec.save(path)
    assert ArchSpec.load(path) == spec
    assert spec_digest(again) == spec_digest(spec)


def test_block_strings_round_trip():
    for text in [
        "ir_r3_k5_s2_e6_c160_se0.25_cc8_sigmoid",
        "ds_r1_k3_s1_e1_c16_noskip",
        "bottleneck_r3_k3_s1_e4_c256",
    ]:
        assert BlockGroup.from_string(text).to_string() == text
    group = BlockGroup.from_string("ir_r3_k5_s2_e6_c160_se0.25_cc8_tanh")
    assert (group.repeats, group.kernel, group.stride, group.expansion) == (3, 5, 2, 6.0)
    assert (group.channels, group.se, group.experts, group.routing) == (160, 0.25, 8, "tanh")


def test_with_condconv_puts_condconv_in_every_conv_of_the_chosen_groups_with_one_routing():
    spec = get_backbone("mnasnet_a1").with_condconv([6, 7], experts=8)
    assert spec.condconv_groups() == [6, 7]
    model = build_model(spec)
    for i, group in enumerate(model.groups, start=1):
        convs = [m for b in group for m in b.modules() if isinstance(m, CondConv2d)]
        static = [
            m
            for b in group
            for n, m in b.named_modules()
            if isinstance(m, torch.nn.Conv2d) and ".se." not in f".{n}."
        ]
        if i in (6, 7):
            assert convs and all(c.num_experts == 8 and c.routing is None for c in convs)
            assert all(
                len([c for c in b.modules() if isinstance(c, CondConv2d)]) == 3 for b in group
            )
            assert all(b.routing is not None and b.routing.fc.out_features == 8 for b in group)
            assert not [m for m in static if not isinstance(m, CondConv2d)], (
                "main path fully CondConv"
            )
        else:
            assert not convs
            assert all(isinstance(b, Block) and b.routing is None for b in group)


def test_shared_routing_weights_are_recorded_per_block():
    spec = get_backbone("mobilenet_v1", 0.25).with_condconv([13], experts=4, routing="softmax")
    model = build_model(spec).eval()
    with torch.no_grad():
        model(torch.randn(3, 3, 64, 64))
    r = model.groups[12][0].routing.last_weights
    assert r.shape == (3, 4)
    torch.testing.assert_close(r.sum(1), torch.ones(3))


def test_width_multiplier_scales_channels():
    spec = get_backbone("mobilenet_v1", 0.25)
    assert spec.stem_channels == 8
    assert [g.channels for g in spec.groups] == [
        16,
        32,
        32,
        64,
        64,
        128,
        128,
        128,
        128,
        128,
        128,
        256,
        256,
    ]


@pytest.mark.parametrize(
    "name, width, head",
    [
        ("mobilenet_v2", 0.5, 1280),  # timm / TF-slim: max(1280, 1280 * width)
        ("mobilenet_v2", 1.4, 1792),
        ("mnasnet_a1", 0.5, 1280),  # TF MnasNet: always 1280
        ("mnasnet_a1", 1.4, 1280),
        ("efficientnet_b0", 0.5, 640),  # EfficientNet: round_filters(1280)
        ("mobilenet_v1", 0.5, 0),  # no head conv
    ],
)
def test_width_multiplier_scales_the_head_by_each_familys_rule(name, width, head):
    spec = get_backbone(name, width)
    assert spec.head_channels == head
    assert ArchSpec.from_json(spec.to_json()) == spec
    assert spec.scale_width(1) is spec
    # A rule for rescaling, not part of the network: the digest ignores it.
    assert spec_digest(replace(spec, head_scaling="fixed")) == spec_digest(spec)


def test_head_scaling_is_validated():
    data = {**get_backbone("mnasnet_a1").to_dict(), "head_scaling": "sometimes"}
    with pytest.raises(UserError, match="head_scaling"):
        ArchSpec.from_dict(data)


def _timm_conv_std(conv) -> float:
    """timm's ``_init_weight_goog`` (fix_group_fanout): normal(0, sqrt(2 / fan_out))."""
    kh, kw = conv.kernel_size
    return math.sqrt(2 / (kh * kw * conv.out_channels // conv.groups))


def test_build_model_initialises_like_timm():
    torch.manual_seed(0)
    model = build_model(get_backbone("mnasnet_a1").with_condconv([7], 8))
    static_dw = model.groups[5][1].dw.conv  # group 6: 5x5 depthwise, 960 channels
    assert static_dw.groups == static_dw.out_channels == 960
    assert static_dw.weight.std().item() == pytest.approx(_timm_conv_std(static_dw), rel=0.03)
    head = model.head.conv  # 1x1, 320 -> 1280
    assert head.weight.std().item() == pytest.approx(_timm_conv_std(head), rel=0.03)
    block = model.groups[6][0]  # group 7: CondConv, 8 experts
    for conv in (block.dw.conv, block.expand.conv):  # 3x3 depthwise 960; 1x1 160 -> 960
        assert isinstance(conv, CondConv2d)
        for expert in conv.expert_kernels():
            assert expert.std().item() == pytest.approx(_timm_conv_std(conv), rel=0.04)
    # Routing: uniform(+-1/sqrt(fan_in + fan_out)), as timm.
    fc, bound = block.routing.fc, 1 / math.sqrt(160 + 8)
    assert fc.weight.abs().max().item() <= bound
    assert fc.weight.std().item() == pytest.approx(bound / math.sqrt(3), rel=0.1)
    assert not fc.bias.any()
    # The classifier departs from timm on purpose (see init_weights): normal(0, 0.01).
    assert model.classifier.weight.std().item() == pytest.approx(0.01, rel=0.05)
    assert not model.classifier.bias.any()


def _routing_weights_at_start(activation: str) -> torch.Tensor:
    """Routing weights of every layer of MobileNetV1 0.25x, 32 experts in all 13 groups."""
    torch.manual_seed(0)
    spec = get_backbone("mobilenet_v1", 0.25).with_condconv(list(range(1, 14)), 32, activation)
    model = build_model(spec).train()  # the first training step: batch statistics
    with torch.no_grad():
        model(torch.randn(32, 3, 64, 64))
    blocks = [block for group in model.groups for block in group]
    assert all(not block.routing.fc.bias.any() for block in blocks), "paper init: zero bias"
    return torch.stack([block.routing.last_weights for block in blocks])  # [13, B, E]


@pytest.mark.parametrize("activation", ROUTING_ACTIVATIONS)
def test_routing_starts_at_the_paper_init(activation):
    """Zero bias: logits start centred on 0, so every activation starts at its midpoint."""
    r = _routing_weights_at_start(activation)
    assert r.shape == (13, 32, 32)
    if activation == "relu":  # about half the experts off, but never all for an example
        assert 0.35 < (r == 0).float().mean().item() < 0.65
        assert (r > 0).any(dim=2).all()
        assert r.mean().item() < 0.5  # not the switched-on start (bias 1.0: every weight ~1)
    elif activation == "sigmoid":
        assert r.mean().item() == pytest.approx(0.5, abs=0.02)
        assert ((r - 0.5).abs() < 0.3).all()  # no expert starts saturated
    elif activation == "tanh":
        assert r.mean().item() == pytest.approx(0.0, abs=0.02)
        assert 0.35 < (r < 0).float().mean().item() < 0.65
    else:  # softmax: close to uniform, no expert dominates
        torch.testing.assert_close(r.sum(2), torch.ones(13, 32))
        assert r.max().item() < 4 / 32 and r.min().item() > 1 / (4 * 32)


@pytest.mark.parametrize(
    "change, field",
    [
        ({"block": "conv"}, "block"),
        ({"repeats": 0}, "repeats"),
        ({"kernel": 4}, "kernel"),
        ({"experts": -1}, "experts"),
        ({"experts": 2.5}, "experts"),
        ({"routing": "gelu"}, "routing"),
        ({"se": 2}, "se"),
    ],
)
def test_invalid_group_names_the_field(change, field):
    data = get_backbone("mnasnet_a1").to_dict()
    data["groups"][2].update(change)
    with pytest.raises(UserError, match=rf"group 3.*{field}"):
        ArchSpec.from_dict(data)


def test_invalid_spec_files_give_clear_errors(tmp_path):
    with pytest.raises(UserError, match="unknown field"):
        ArchSpec.from_dict({**get_backbone("mnasnet_a1").to_dict(), "colour": "red"})
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(UserError, match="bad.json"):
        ArchSpec.load(bad)
    with pytest.raises(UserError, match="unknown backbone 'mnasnet_b9'"):
        get_backbone("mnasnet_b9")
    with pytest.raises(UserError, match="block group 8 does not exist"):
        get_backbone("mnasnet_a1").with_condconv([8])


@pytest.mark.parametrize("field", ["stem_channels", "num_classes", "in_channels"])
@pytest.mark.parametrize("value", [True, 2.0, "32"])
def test_spec_integer_fields_refuse_bools_floats_and_strings(field, value):
    data = {**get_backbone("mnasnet_a1").to_dict(), field: value}
    with pytest.raises(UserError, match=rf"{field} must be a positive integer, got {value!r}"):
        ArchSpec.from_dict(data)


def test_group_integer_fields_refuse_true():
    data = get_backbone("mnasnet_a1").to_dict()
    data["groups"][0]["channels"] = True
    with pytest.raises(UserError, match="group 1: channels must be a positive integer, got True"):
        ArchSpec.from_dict(data)
    with pytest.raises(UserError, match="experts must be an integer >= 1, got True"):
        get_backbone("mnasnet_a1").with_condconv([6, 7], experts=True)
    with pytest.raises(UserError, match="block group True does not exist"):
        get_backbone("mnasnet_a1").with_condconv([True])


def test_model_is_a_backbone_name_or_a_spec_file(tmp_path):
    from ccsearch.arch.resolve import resolve_spec

    assert resolve_spec("MnasNet-A1").name == "mnasnet_a1"
    path = tmp_path / "mine.json"
    get_backbone("mobilenet_v1").with_condconv([13], 4).save(path)
    assert resolve_spec(str(path)).condconv_groups() == [13]
    with pytest.raises(UserError, match=f"spec file not found: {tmp_path / 'nope.json'}"):
        resolve_spec(str(tmp_path / "nope.json"))
    with pytest.raises(UserError, match="spec file not found: specs/mnasnet"):
        resolve_spec("specs/mnasnet")  # a path, not a backbone name
    with pytest.raises(UserError, match="unknown backbone 'mnasnet_b9'; shipped: mnasnet_a1"):
        resolve_spec("mnasnet_b9")


def _calibrated_routing_at_start(activation: str) -> torch.Tensor:
    torch.manual_seed(0)
    spec = get_backbone("mobilenet_v1", 0.25).with_condconv(list(range(1, 14)), 32, activation)
    model = build_model(replace(spec, calibrated_routing=True)).train()
    with torch.no_grad():
        model(torch.randn(32, 3, 64, 64))
    return torch.stack([b.routing.last_weights for g in model.groups for b in g])  # [13, B, E]


@pytest.mark.parametrize("activation", ROUTING_ACTIVATIONS)
def test_calibrated_routing_starts_every_activation_like_sigmoid(activation):
    """The raw tanh and ReLU starts (above) mix near-zero kernels; calibrated, every
    activation starts as sigmoid does: weights near 1/2, one kernel of mass ~E/2 shared by
    the examples (benchmarks/README.md, "The cause, and a calibrated routing")."""
    r = _calibrated_routing_at_start(activation)
    mass = r.sum(2)  # [13, B]
    assert mass.mean().item() == pytest.approx(16, rel=0.05)
    assert r.mean().item() == pytest.approx(0.5, abs=0.03)
    assert (r > 0).all()  # no expert starts off, for any example (ReLU too)
    assert r.std(dim=1).mean().item() < 0.1  # close to one shared kernel at the start


def test_calibrated_sigmoid_network_is_the_raw_one():
    spec = get_backbone("mnasnet_a1").with_condconv([6, 7], 8, "sigmoid")
    calibrated = replace(spec, calibrated_routing=True)
    assert spec_digest(calibrated) == spec_digest(spec)
    torch.manual_seed(0)
    a = build_model(spec).eval()
    torch.manual_seed(0)
    b = build_model(calibrated).eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(a(x), b(x))


def test_calibrated_routing_is_in_the_spec_and_its_digest_only_where_it_changes_routing():
    base = get_backbone("mnasnet_a1")
    tanh = base.with_condconv([5], 4, "tanh")
    calibrated = replace(tanh, calibrated_routing=True)
    assert spec_digest(calibrated) != spec_digest(tanh)
    assert spec_digest(replace(base, calibrated_routing=True)) == spec_digest(base)
    assert ArchSpec.from_json(calibrated.to_json()) == calibrated
    old = tanh.to_dict()
    del old["calibrated_routing"]  # a spec written before the field: the paper's routing
    assert ArchSpec.from_dict(old) == tanh and not ArchSpec.from_dict(old).calibrated_routing
    block = build_model(calibrated).groups[4][0]
    assert block.routing.calibrated and not build_model(tanh).groups[4][0].routing.calibrated
    with pytest.raises(UserError, match="calibrated_routing must be true or false, got 'yes'"):
        replace(tanh, calibrated_routing="yes")


def test_a_spec_too_large_to_build_is_refused_before_any_memory_is_taken():
    """channels: 1e9 (a typo) would fill the machine's memory; every shipped network,
    with 32 experts in every group too, is far below the bound."""
    base = get_backbone("mnasnet_a1")
    wide = replace(base.groups[-1], channels=10**9)
    with pytest.raises(UserError, match="weights, over the 4,000,000,000 this tool builds"):
        replace(base, groups=(*base.groups[:-1], wide))
    for name in BACKBONES:
        spec = get_backbone(name)
        spec.with_condconv(list(range(1, len(spec.groups) + 1)), 32)  # accepted
