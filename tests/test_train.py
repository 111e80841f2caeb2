"""Proxy presets, on-device augmentation and the candidate trainer, on real (small) data."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from _formats import make_imagenet

from ccsearch.arch import get_backbone
from ccsearch.cli import main
from ccsearch.data import load_data
from ccsearch.errors import UserError
from ccsearch.train import PRESETS, get_proxy, load_proxy_data, train_candidate
from ccsearch.train.augment import random_crop_flip
from ccsearch.train.trainer import _lr_schedule, _routing_blend

TINY = get_backbone("mobilenet_v1", 0.25)  # a fast model for behaviour tests


@pytest.fixture(scope="module")
def digits():
    return load_data("digits", resolution=32)


def test_random_crop_matches_explicit_per_example_crop():
    torch.manual_seed(0)
    images = torch.randint(0, 255, (6, 3, 8, 8), dtype=torch.uint8)
    out = random_crop_flip(images, padding=2, flip=False, generator=torch.Generator().manual_seed(3))
    g = torch.Generator().manual_seed(3)
    dy = torch.randint(0, 5, (6,), generator=g)
    dx = torch.randint(0, 5, (6,), generator=g)
    padded = torch.nn.functional.pad(images, (2, 2, 2, 2))
    for b in range(6):
        expected = padded[b, :, dy[b] : dy[b] + 8, dx[b] : dx[b] + 8]
        assert torch.equal(out[b], expected)


def test_random_flip_flips_about_half_and_keeps_the_rest():
    images = torch.arange(64 * 3 * 4 * 4, dtype=torch.float32).view(64, 3, 4, 4)
    out = random_crop_flip(images, padding=0, flip=True, generator=torch.Generator().manual_seed(0))
    flipped = [bool(torch.equal(o, i.flip(2))) for o, i in zip(out, images, strict=True)]
    kept = [bool(torch.equal(o, i)) for o, i in zip(out, images, strict=True)]
    assert all(f != k for f, k in zip(flipped, kept, strict=True))
    assert 16 < sum(flipped) < 48


def test_lr_schedule_warms_up_then_decays_to_zero():
    proxy = get_proxy("smoke-digits", epochs=4, warmup_epochs=1)
    factor = _lr_schedule(proxy, steps_per_epoch=10)
    warm = [factor(s) for s in range(10)]
    assert warm == sorted(warm) and warm[0] < 0.2 and factor(10) == pytest.approx(1.0)
    decay = [factor(s) for s in range(10, 40)]
    assert decay == sorted(decay, reverse=True) and decay[-1] < 0.01


def test_presets_and_overrides():
    assert {"smoke", "imagenet100-64px"} <= set(PRESETS)
    assert PRESETS["imagenet100-64px"].classes == 100 and PRESETS["imagenet100-64px"].resolution == 64
    assert get_proxy("smoke-digits", epochs=2).epochs == 2
    with pytest.raises(UserError, match="unknown proxy preset 'fast'"):
        get_proxy("fast")
    with pytest.raises(UserError, match="optimizer"):
        get_proxy("smoke-digits", optimizer="adam")


def test_proxy_yaml_file(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text("data: digits\nresolution: 24\nepochs: 1\noptimizer: rmsprop\n")
    proxy = get_proxy(str(path))
    assert (proxy.name, proxy.resolution, proxy.optimizer) == ("mine", 24, "rmsprop")
    path.write_text("resolution: 24\nepoch: 1\n")
    with pytest.raises(UserError, match=r"unknown proxy field\(s\) \['epoch'\]"):
        get_proxy(str(path))


def test_adapt_changes_only_classes_width_and_depth():
    spec = get_backbone("mnasnet_a1").with_condconv([6, 7], 8)
    adapted = get_proxy("smoke-digits", width=0.5, depth=0.5).adapt(spec, num_classes=10)
    assert adapted.num_classes == 10
    assert [g.channels for g in adapted.groups] == [8, 16, 24, 40, 56, 80, 160]
    assert [g.repeats for g in adapted.groups] == [1, 1, 2, 2, 1, 2, 1]
    assert adapted.condconv_groups() == [6, 7]


def test_smoke_proxy_learns_mnasnet_with_condconv(digits):
    """The acceptance run: MnasNet-A1 + CondConv(6,7, 8 experts) on the smoke proxy > 50%."""
    spec = get_backbone("mnasnet_a1").with_condconv([6, 7], 8)
    seen = []
    result = train_candidate(spec, get_proxy("smoke-digits"), digits, on_epoch=lambda e, a: seen.append((e, a)) or False)
    assert result.status == "ok", result.reason
    assert result.top1 > 50
    assert [e for e, _ in seen] == [1, 2, 3, 4]
    assert result.curve == [a for _, a in seen]
    assert result.smoke_test and "not ImageNet" in result.data
    assert result.images_per_sec > 0 and result.wall_time > 0
    assert all(math.isfinite(loss) for loss in result.losses)


def test_same_seed_same_curve_and_pruning_stops_early(digits):
    proxy = get_proxy("smoke-digits", epochs=2)
    a = train_candidate(TINY, proxy, digits, seed=1)
    b = train_candidate(TINY, proxy, digits, seed=1)
    assert a.curve == b.curve and a.losses == b.losses
    pruned = train_candidate(TINY, proxy, digits, seed=1, on_epoch=lambda e, acc: True)
    assert pruned.status == "pruned" and pruned.epochs == 1 and len(pruned.curve) == 1


def test_divergence_is_a_result_not_a_crash(digits):
    result = train_candidate(TINY, get_proxy("smoke-digits", epochs=2, lr=1e12, warmup_epochs=0), digits)
    assert result.status == "diverged"
    assert "non-finite" in result.reason


def test_prepare_data_cache_feeds_the_trainer(tmp_path, capsys):
    root = make_imagenet(tmp_path / "imagenet", n_classes=3, train_per_class=8, val_per_class=4)
    code = main(["prepare-data", "imagenet", "--root", str(root), "--resolution", "16", "-o", str(tmp_path / "cache"), "--quiet"])
    out = capsys.readouterr().out
    assert code == 0 and "1 unreadable images skipped" in out
    proxy = get_proxy("smoke", data="imagenet", resolution=16, epochs=1, batch_size=8)
    data = load_proxy_data(proxy, str(tmp_path / "cache"))
    assert data.source == "imagenet" and data.num_classes == 3 and len(data.train_y) == 24
    result = train_candidate(TINY, proxy, data)
    assert result.status == "ok" and not result.smoke_test and len(result.curve) == 1


def test_cli_train_json_on_the_embedded_default(capsys):
    code = main(["train", "mobilenet_v1", "--width", "0.25", "--epochs", "1", "--json"])
    assert code == 0
    data = json.loads(capsys.readouterr().out)
    assert data["status"] == "ok" and data["smoke_test"] is True
    assert data["proxy_config"]["name"] == "smoke" and data["convention"] == "paper"
    assert len(data["curve"]) == 1


@pytest.mark.parametrize(
    "argv, message",
    [
        (["train", "mnasnet_a1", "--proxy", "fast"], "unknown proxy preset 'fast'"),
        (["train", "mnasnet_a1", "--proxy", "imagenet100-64px"], "give its location with --data"),
        (["train", "mnasnet_a1", "--data", "/no/such/dir"], "neither a data source"),
        (["train", "mnasnet_a1", "--data", "imagenet=/no/such/dir"], "does not exist"),
    ],
)
def test_train_user_errors(capsys, argv, message):
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_empty_and_wrong_format_data_dirs(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert main(["train", "mnasnet_a1", "--data", f"imagenet={tmp_path / 'empty'}"]) == 2
    assert "empty" in capsys.readouterr().err
    np.save(tmp_path / "x.npy", np.zeros(3))
    assert main(["train", "mnasnet_a1", "--data", str(tmp_path)]) == 2
    assert "cannot tell the data format" in capsys.readouterr().err


def test_routing_statistics_describe_the_routing_weights_of_each_group(digits):
    """Recorded after training: per CondConv group, a 20-bin histogram of the routing
    weights over the held-out images, the share below 0.05 and the experts above it,
    checked against the weights read off the model's routers by a forward hook."""
    from ccsearch.arch import build_model
    from ccsearch.layers import Routing
    from ccsearch.train import DeviceData

    proxy = get_proxy("smoke", epochs=1)
    spec = TINY.with_condconv([13], 4, "tanh").with_condconv([12], 2, "sigmoid")
    result = train_candidate(spec, proxy, digits, "cpu", seed=0)
    stats = result.routing_stats
    assert set(stats) == {"12", "13"}
    n = len(digits.val_y)
    assert sum(stats["13"]["hist"]) == n * 4 and sum(stats["12"]["hist"]) == n * 2
    assert stats["13"]["bins"] == [-1.0, 1.0] and stats["12"]["bins"] == [0.0, 1.0]
    # the same model, untrained, through a hook: the statistics' definitions, recomputed
    model = build_model(proxy.adapt(spec, digits.num_classes)).eval()
    data = DeviceData.from_proxy_data(digits, torch.device("cpu"))
    seen = []
    router = [m for name, m in model.named_modules() if isinstance(m, Routing) and name.startswith("groups.12")][0]
    router.register_forward_hook(lambda m, i, out: seen.append(out.detach()))
    from ccsearch.train.routing_stats import routing_statistics

    mine = routing_statistics(model, data.val_x, data.normalise)["13"]
    w = torch.cat(seen)
    assert w.shape == (n, 4)
    assert mine["near_zero"] == pytest.approx(float((w.abs() <= 0.05).float().mean()))
    assert mine["active"] == pytest.approx(float((w.abs() > 0.05).float().sum(1).mean()))
    assert mine["hist"] == torch.histc(w, bins=20, min=-1, max=1).int().tolist()
    # The trainer takes them from its last evaluation: the same numbers, no extra pass.
    from ccsearch.train.routing_stats import RoutingRecorder
    from ccsearch.train.trainer import evaluate

    recorder = RoutingRecorder(model)
    evaluate(model, data, batch_size=100, recorder=recorder)
    assert recorder.statistics() == routing_statistics(model, data.val_x, data.normalise)


def test_the_proxy_recipe_reaches_the_model_it_trains():
    """BN momentum and eps on every batch norm, TF's drop-connect rates (block i of n:
    rate * i / n) and the residual branches' last batch norm at 0 or 1."""
    from dataclasses import replace

    from ccsearch.arch import build_model
    from ccsearch.arch.blocks import Block
    from ccsearch.train.trainer import apply_recipe

    recipe = replace(get_proxy("smoke"), bn_momentum=0.01, bn_eps=1e-3, drop_connect=0.2,
                     zero_init_last_bn=False)
    model = build_model(get_backbone("mnasnet_a1"))
    blocks = [m for m in model.modules() if isinstance(m, Block)]
    assert all(b.last_bn().weight.abs().sum() == 0 for b in blocks if b.has_skip)  # builder's
    apply_recipe(model, recipe)
    norms = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert {(m.momentum, m.eps) for m in norms} == {(0.01, 1e-3)}
    assert [b.drop_connect for b in blocks] == pytest.approx([0.2 * i / len(blocks)
                                                              for i in range(len(blocks))])
    assert all(torch.equal(b.last_bn().weight, torch.ones_like(b.last_bn().weight))
               for b in blocks if b.has_skip)
    for bad, message in [({"bn_momentum": 1.5}, "bn_momentum must be in [0, 1)"),
                         ({"bn_eps": 0}, "bn_eps must be > 0"),
                         ({"drop_connect": True}, "drop_connect must be in [0, 1)"),
                         ({"zero_init_last_bn": "no"}, "zero_init_last_bn must be true or false")]:
        with pytest.raises(UserError) as err:
            replace(recipe, **bad)
        assert message in str(err.value)


def test_drop_connect_drops_whole_residual_branches_per_example_in_training_only():
    from ccsearch.arch.blocks import InvertedResidual

    torch.manual_seed(0)
    block = InvertedResidual(16, 16, 3, 1, 4, 0, "relu", True, 0, "sigmoid")
    block.drop_connect = 0.5
    x = torch.randn(64, 16, 8, 8)
    block.eval()
    with torch.no_grad():
        branch = block(x) - x  # the residual branch, as inference runs it
        block.train()
        for m in block.modules():  # batch norm in training uses batch statistics: freeze it
            if isinstance(m, torch.nn.BatchNorm2d):
                m.eval()
        out = block(x) - x
    dropped = [torch.allclose(o, torch.zeros_like(o)) for o in out]
    kept = [torch.allclose(o, b / 0.5, atol=1e-5) for o, b in zip(out, branch, strict=True)]
    assert all(d or k for d, k in zip(dropped, kept, strict=True)), "whole branches only"
    assert 16 < sum(dropped) < 48  # about half of 64 examples


def test_routing_lr_scales_only_the_routing_functions_step(digits, tmp_path):
    """``routing_lr`` is a factor of the LR for the routers' parameters alone: at 0 they
    keep their initial values through training while the experts and the rest learn."""
    from ccsearch.arch import build_model
    from ccsearch.checkpoint import load_weights
    from ccsearch.train.trainer import _optimizer

    spec = TINY.with_condconv([len(TINY.groups) - 1, len(TINY.groups)], 4)
    proxy = get_proxy("smoke-digits", epochs=1, routing_lr=0.0)
    result = train_candidate(spec, proxy, digits, seed=3, save_to=tmp_path / "ckpt")
    assert result.status == "ok"
    torch.manual_seed(3)
    initial = build_model(proxy.adapt(spec, digits.num_classes))
    trained = build_model(proxy.adapt(spec, digits.num_classes))
    load_weights(trained, tmp_path / "ckpt" / "model.safetensors")
    before, after = dict(initial.named_parameters()), dict(trained.named_parameters())
    routing = [name for name in before if ".routing." in name]
    assert routing and all(torch.equal(before[n], after[n]) for n in routing)
    experts = [n for n in before if n.endswith("conv.weight") and before[n].ndim == 2]
    assert experts and not any(torch.equal(before[n], after[n]) for n in experts)

    groups = _optimizer(initial, get_proxy("smoke-digits", routing_lr=0.25)).param_groups
    assert sorted(id(p) for g in groups for p in g["params"]) == sorted(map(id, before.values()))
    for group in groups:
        in_routing = {id(p) for p in group["params"]} <= {id(before[n]) for n in routing}
        assert group["lr_factor"] == (0.25 if in_routing else 1.0)
    with pytest.raises(UserError, match="routing_lr must be >= 0, got -1"):
        get_proxy("smoke-digits", routing_lr=-1)


def test_routing_warmup_ramps_the_blend_and_trains_the_candidate_itself_at_the_end():
    """``routing_warmup`` is a fraction of the training: the blend rises linearly to 1 by
    then and stays 1, whatever the epochs (the last step always trains the candidate)."""
    proxy = get_proxy("smoke-digits", epochs=4, routing_warmup=0.5)
    blend = _routing_blend(proxy, steps_per_epoch=10)  # 40 steps, a ramp of 20
    assert [blend(s) for s in (0, 9, 19, 20, 39)] == [1 / 20, 10 / 20, 1.0, 1.0, 1.0]
    for warmup, epochs in ((1.0, 1), (1.0, 3), (0.3, 2), (0.01, 1)):
        last = _routing_blend(get_proxy("smoke-digits", epochs=epochs, routing_warmup=warmup), 7)
        assert last(epochs * 7 - 1) == 1.0
    assert _routing_blend(get_proxy("smoke-digits"), 10)(0) == 1.0  # off: 0
    for bad in (1.5, -0.1, True):
        with pytest.raises(UserError, match=f"routing_warmup must be a fraction of the "
                                            f"training in \\[0, 1\\], got {bad!r}"):
            get_proxy("smoke-digits", routing_warmup=bad)


def test_routing_warmup_changes_only_condconv_training_and_resumes_exactly(digits, tmp_path):
    """With a routing warm-up a CondConv candidate trains differently, and a run stopped
    mid-ramp resumes to the result of the run without a stop; a model without CondConv
    has no routing to blend and trains bit for bit as without it.  A checkpoint written
    before the field existed resumes as one at its default (off)."""
    from ccsearch.checkpoint import read_checkpoint

    spec = TINY.with_condconv([len(TINY.groups) - 1, len(TINY.groups)], 4)
    plain = get_proxy("smoke-digits", epochs=2)
    ramped = get_proxy("smoke-digits", epochs=2, routing_warmup=1.0)
    without = train_candidate(spec, plain, digits, seed=1)
    straight = train_candidate(spec, ramped, digits, seed=1)
    assert straight.status == "ok" and straight.losses != without.losses
    stopped = train_candidate(spec, ramped, digits, on_epoch=lambda e, t: e == 1, seed=1,
                              save_to=tmp_path / "ramped")
    assert stopped.status == "pruned"
    resumed = train_candidate(spec, ramped, digits, seed=1,
                              resume=read_checkpoint(tmp_path / "ramped"))
    assert resumed.curve == straight.curve and resumed.losses == pytest.approx(straight.losses)
    static = [train_candidate(TINY, p, digits, seed=1).losses for p in (plain, ramped)]
    assert static[0] == static[1]

    train_candidate(spec, plain, digits, on_epoch=lambda e, t: e == 1, seed=1,
                    save_to=tmp_path / "old")
    meta = json.loads((tmp_path / "old" / "checkpoint.json").read_text())
    del meta["proxy"]["routing_warmup"]
    (tmp_path / "old" / "checkpoint.json").write_text(json.dumps(meta))
    old = train_candidate(spec, plain, digits, seed=1, resume=read_checkpoint(tmp_path / "old"))
    assert old.curve == without.curve
    with pytest.raises(UserError, match="used another proxy: routing_warmup differ"):
        train_candidate(spec, ramped, digits, seed=1, resume=read_checkpoint(tmp_path / "old"))
