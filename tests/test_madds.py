"""MADD counts against published figures, and nothing a model runs left uncounted."""

from __future__ import annotations

import json

import optuna
import pytest
import torch
from torch import nn

from ccsearch import madds
from ccsearch.arch import ArchSpec, BlockGroup, build_model, get_backbone, spec_digest
from ccsearch.arch.backbones import PUBLISHED
from ccsearch.config import shipped
from ccsearch.errors import UserError
from ccsearch.layers import CondConv2d, Routing
from ccsearch.madds import (
    count_madds,
    exact_madds_label,
    format_madds,
    load_madds_cache,
    madds_cache,
    madds_parts,
    moe_equivalent_madds,
    parse_madds,
)
from ccsearch.search.space import load_search_space

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


# ---- the part cache against fvcore's whole-model count -----------------------------------


def _whole_model_analysis(spec: ArchSpec, convention: str):
    """fvcore on the whole model, traced in one piece (the reference for the part cache)."""
    with torch.device("meta"):
        model = build_model(spec)
    model = model.to_empty(device="cpu").eval()
    image = torch.zeros(1, spec.in_channels, 224, 224)
    analysis = madds._analysis(model, image, convention)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # a batch-1 trace gains nothing from threads on a busy CPU
    try:
        analysis.total()  # traces once; fvcore keeps the result for the other queries
    finally:
        torch.set_num_threads(threads)
    return model, analysis


def _random_candidates(space_name: str, n: int, seed: int = 0) -> dict[str, ArchSpec]:
    """The distinct architectures among ``n`` random draws of a shipped search space."""
    space = load_search_space(space_name)
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=seed))
    specs: dict[str, ArchSpec] = {}
    for _ in range(n):
        spec = space.sample(study.ask())
        specs.setdefault(spec_digest(spec), spec)
    return specs


def _references(parts: dict[str, list], extra: int) -> list[str]:
    """Candidates that between them use every cached part (greedy cover), plus ``extra``
    others, so each part is checked inside a whole model and in more than one context."""
    uncovered = {key for entries in parts.values() for key, _ in entries}
    chosen: list[str] = []
    while uncovered:
        best = max(parts, key=lambda d: len(uncovered & {k for k, _ in parts[d]}))
        chosen.append(best)
        uncovered -= {k for k, _ in parts[best]}
    others = [d for d in parts if d not in chosen]
    return chosen + others[:: max(1, len(others) // extra)][:extra] if others else chosen


def _assert_matches_whole_model(spec: ArchSpec, convention: str) -> None:
    model, analysis = _whole_model_analysis(spec, convention)
    report = count_madds(spec, convention=convention)
    parts = [entry for _, entry in madds_parts(spec, convention=convention)]
    by_module, by_module_op = analysis.by_module(), analysis.by_module_and_operator()
    summed: dict[str, int] = {}
    for entry in parts:
        for op, n in entry["ops"].items():
            summed[op] = summed.get(op, 0) + n
    whole = {op: n for op, n in analysis.by_operator().items() if n}
    assert summed == whole, f"{spec.name}: per-op totals differ"
    assert report.madds == analysis.total()
    assert report.skipped_ops == dict(analysis.unsupported_ops())
    assert report.params == sum(p.numel() for p in model.parameters())
    assert report.stem == by_module["stem"]
    assert report.head == by_module.get("head", 0) + by_module["classifier"]
    for i, (group, entry) in enumerate(zip(report.groups, parts[1:-1], strict=True)):
        assert group.madds == by_module[f"groups.{i}"], f"{spec.name} group {i + 1}"
        assert entry["ops"] == {k: v for k, v in by_module_op[f"groups.{i}"].items() if v}
        assert group.params == sum(p.numel() for p in model.groups[i].parameters())
    names = dict(model.named_modules())
    cc = [n for n, m in names.items() if isinstance(m, CondConv2d)]
    assert report.condconv_mixing == sum(by_module_op[n].get("matmul", 0) for n in cc)
    routing = [n for n, m in names.items() if isinstance(m, Routing)]
    assert report.routing == sum(by_module[n] for n in routing)


@pytest.mark.parametrize("space_name", shipped("search_spaces"))
def test_cached_counts_equal_whole_model_fvcore(space_name):
    """200 random candidates per shipped space: each count is the sum of cached parts, and
    every part is checked op for op inside a whole-model fvcore trace (see _references)."""
    specs = _random_candidates(space_name, 200)
    parts = {digest: madds_parts(spec) for digest, spec in specs.items()}
    for digest, spec in specs.items():
        report = count_madds(spec)
        assert report.madds == sum(entry["madds"] for _, entry in parts[digest])
    for digest in _references(parts, extra=2):
        _assert_matches_whole_model(specs[digest], "paper")


@pytest.mark.parametrize("space_name", ["mobilenet_v1_routing", "resnet50_experts"])
def test_cached_counts_equal_whole_model_fvcore_convention(space_name):
    """fvcore's table also counts batch norm and pooling, and its skipped ops depend on the
    routing activation (in the keys there): the same check, on the two small spaces."""
    specs = _random_candidates(space_name, 50, seed=1)
    parts = {digest: madds_parts(spec, convention="fvcore") for digest, spec in specs.items()}
    for digest in _references(parts, extra=1):
        _assert_matches_whole_model(specs[digest], "fvcore")


def test_routing_is_left_out_of_paper_keys_only():
    base = get_backbone("mnasnet_a1")
    a, b = base.with_condconv([6], 8, "sigmoid"), base.with_condconv([6], 8, "softmax")
    assert [k for k, _ in madds_parts(a)] == [k for k, _ in madds_parts(b)]
    fa, fb = madds_parts(a, convention="fvcore"), madds_parts(b, convention="fvcore")
    assert fa[6][0] != fb[6][0]
    assert fa[6][1]["skipped"] != fb[6][1]["skipped"]  # aten::sigmoid vs aten::softmax


def test_cache_round_trips_through_json_and_ignores_other_versions(monkeypatch):
    spec = get_backbone("mobilenet_v1", 0.25).with_condconv([12, 13], 4)
    expected = count_madds(spec)
    stored = json.loads(json.dumps(madds_cache()))
    monkeypatch.setattr(madds, "_PART_CACHE", {})
    stale = {k.replace(madds._counter_version(), "0" * 16): v for k, v in stored.items()}
    assert load_madds_cache(stale) == 0
    assert load_madds_cache(stored) == len(stored)

    def no_trace(*args):
        raise AssertionError("a stored part was traced again")

    monkeypatch.setattr(madds, "_trace", no_trace)
    assert count_madds(spec) == expected


# ---- mixture-of-experts equivalent ---------------------------------------------------------


def test_moe_equivalent_matches_a_hand_count():
    """One depthwise-separable CondConv block at 32px: every term by hand."""
    spec = ArchSpec(
        name="tiny",
        groups=(BlockGroup("dsa", 1, 3, 1, 16, experts=4, skip=False),),
        stem_channels=8,
        head_channels=0,
        num_classes=10,
        dropout=0.0,
    )
    e, px = 4, 16 * 16  # experts; output pixels after the stride-2 stem
    stem = 3 * 3 * 3 * 8 * px
    dw, pw = 3 * 3 * 8 * px, 8 * 16 * px  # depthwise 3x3 on 8 channels, pointwise 8 -> 16
    routing, classifier = 8 * e, 16 * 10
    mixing = e * (8 * 3 * 3 + 16 * 8)  # E x kernel size, both convs
    assert count_madds(spec, resolution=32).madds == stem + dw + pw + mixing + routing + classifier
    combine = e * (8 * px + 16 * px)  # E multiply-adds per output value of each conv
    moe = stem + e * (dw + pw) + combine + routing + classifier
    assert moe_equivalent_madds(spec, resolution=32) == moe


@pytest.mark.parametrize("groups", [[13], [1, 7, 13]])
def test_moe_equivalent_matches_fvcore_on_the_experts_execution(groups):
    """``impl="experts"`` runs the mixture (E convs as one, outputs summed): fvcore agrees."""
    spec = get_backbone("mobilenet_v1", 0.25).with_condconv(groups, 32)
    with torch.device("meta"):
        model = build_model(spec)
    model = model.to_empty(device="cpu")
    for m in model.modules():
        if isinstance(m, CondConv2d):
            m.impl = "experts"
    assert moe_equivalent_madds(spec) == count_madds(model).madds
    plain = get_backbone("mobilenet_v1", 0.25)
    assert moe_equivalent_madds(plain) == count_madds(plain).madds


def test_cli_madds_moe_prints_the_mixture_of_experts_cost(capsys):
    """The rebuttal's comparison: CondConv against E separate convolutions per layer."""
    from ccsearch.cli import main
    from ccsearch.madds import moe_equivalent_madds

    spec = get_backbone("mobilenet_v1", 0.25).with_condconv(list(range(1, 14)), 32)
    assert main(["madds", "mobilenet_v1", "--width", "0.25", "--condconv", "all", "--experts", "32",
                 "--moe", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["moe_equivalent_madds"] == moe_equivalent_madds(spec)
    assert out["madds"] / out["moe_equivalent_madds"] < 0.07  # cheaper than the paper's 7%
    assert main(["madds", "mobilenet_v1", "--width", "0.25", "--condconv", "13", "--moe"]) == 0
    assert "CondConv is" in capsys.readouterr().out


def test_a_study_keeps_its_madd_part_counts_for_the_processes_that_join_it(tiny_runs):
    """``ccsearch run`` stores the part counts with the study; a process that opens the
    study (resume, worker, reader) counts the study's candidates without tracing again."""
    import ccsearch.madds as madds
    from ccsearch.arch import ArchSpec
    from ccsearch.search import run
    from ccsearch.search.record import read_all

    study = run.open_folder(tiny_runs[0]).study
    stored = study.user_attrs[run.MADDS_CACHE]
    assert stored and all(json.loads(key)["counter"] for key in stored)
    madds._PART_CACHE.clear()  # a fresh process's cache
    search = run.open_folder(tiny_runs[0])
    assert set(madds.madds_cache()) == set(stored)
    for record in read_all(search.study):
        if record.spec:
            assert madds.count_madds(ArchSpec.from_dict(record.spec)).madds == record.madds
    assert set(madds.madds_cache()) == set(stored), "nothing traced again"
