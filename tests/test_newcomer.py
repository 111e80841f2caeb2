"""Issue 18, a newcomer's pass over the CLI: each mistake is one line on stderr and exit
code 2 and leaves nothing behind; each hint works.  Every test runs the exact command."""

from __future__ import annotations

import json
import os
import stat
import warnings

import optuna
import pytest
import torch
from torch import nn

from ccsearch.cli import main
from ccsearch.layers import CondConv2d
from ccsearch.search.record import read_all

NO_GPU = pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without a GPU")


def cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


RAY_TOKEN_WARNING = "authentication_token_setup.py"  # Ray's own log line, not ccsearch's


def assert_error(result: tuple[int, str, str], *fragments: str) -> str:
    """The one-line error of a user mistake: exit code 2, ``ccsearch: error: ...``."""
    code, _, err = result
    err = "".join(line for line in err.splitlines(keepends=True) if RAY_TOKEN_WARNING not in line)
    assert code == 2, err
    assert err.startswith("ccsearch: error: ") and err.count("\n") == 1, err
    for fragment in fragments:
        assert fragment in err
    return err


# ---- 1. --device ----------------------------------------------------------------------------


@NO_GPU
@pytest.mark.parametrize("command", ["train", "latency"])
def test_cuda_without_a_gpu_is_one_line(capsys, command):
    assert_error(cli(capsys, command, "mnasnet_a1", "--device", "cuda"), "--device cuda",
                 "no CUDA device")


@pytest.mark.parametrize("device", ["gpu", "cuda:x", "cuda:99", "cpu:0"])
def test_a_bad_device_string_is_one_line(capsys, device):
    assert_error(cli(capsys, "train", "mnasnet_a1", "--device", device), f"--device {device}")


@NO_GPU
def test_run_on_cuda_without_a_gpu_leaves_no_folder(capsys, tmp_path):
    out = tmp_path / "D"
    assert_error(cli(capsys, "run", "--device", "cuda", "--trials", "1", "--out", str(out)),
                 "--device cuda")
    assert not out.exists()


def test_worker_checks_its_device_before_the_storage(capsys, tmp_path):
    db = tmp_path / "x.db"
    assert_error(cli(capsys, "worker", "--storage", f"sqlite:///{db}", "--study", "s",
                     "--device", "gpu"), "--device gpu")
    assert not db.exists()


# ---- 2. --condconv ranges -------------------------------------------------------------------


def test_a_reversed_range_is_an_error(capsys):
    assert_error(cli(capsys, "madds", "mnasnet_a1", "--condconv", "7-5", "--experts", "8"),
                 "'7-5'", "5-7")


# ---- 3. budgets below every candidate -------------------------------------------------------


@pytest.mark.parametrize("budget, hint", [
    ("300", "take a unit (300M is 300 million)"),  # 300M is below 311.6M too
    ("320", "did you mean 320M?"),
])
def test_a_budget_without_a_unit_is_an_error(capsys, tmp_path, budget, hint):
    out = tmp_path / "D"
    assert_error(cli(capsys, "run", "--budget", budget, "--out", str(out)),
                 "the smallest, mnasnet_a1 without CondConv at width 1, has 311.6M MADDs", hint)
    assert not out.exists()


def test_a_budget_below_the_smallest_width_is_an_error(capsys, tmp_path):
    # MobileNetV2 at 0.75x without CondConv: 209.1M MADDs, the space's smallest candidate.
    study = tmp_path / "v2.yaml"
    study.write_text("search_space: mobilenet_v2\nbudget: 200M\n")
    out = tmp_path / "D"
    assert_error(cli(capsys, "run", "--study", str(study), "--out", str(out)), "209.1M", "0.75")
    assert not out.exists()


# ---- 4. --cpus-per-trial 0 -----------------------------------------------------------------


def test_zero_cpus_per_trial_is_an_error(capsys, tmp_path):
    out = tmp_path / "D"
    assert_error(cli(capsys, "run", "--backend", "ray", "--cpus-per-trial", "0", "--out", str(out)),
                 "--cpus-per-trial must be > 0, got 0")
    assert not out.exists()


# ---- 5. CCSEARCH_STORAGE -------------------------------------------------------------------


def test_run_reads_the_storage_from_the_environment(capsys, tmp_path, monkeypatch):
    # A wrong URL proves it is read: the run refuses it instead of using its folder's.
    monkeypatch.setenv("CCSEARCH_STORAGE", "nosuch://x")
    out = tmp_path / "D"
    assert_error(cli(capsys, "run", "--trials", "1", "--out", str(out)), "nosuch://x")
    assert not out.exists()


# ---- 6. paths in a study file ----------------------------------------------------------------


def test_a_study_file_names_files_next_to_it(capsys, tmp_path, monkeypatch):
    folder = tmp_path / "mine"
    folder.mkdir()
    (folder / "space.yaml").write_text("backbone: mobilenet_v1\nwidth: [0.25]\ngroups: [13]\n"
                                       "placement: one\nexperts: [2]\n")
    (folder / "proxy.yaml").write_text("data: digits\nresolution: 32\nepochs: 1\nbatch_size: 64\n")
    (folder / "study.yaml").write_text("search_space: space.yaml\nproxy: proxy.yaml\n"
                                       "budget: 50M\ntrials: 1\npruner: none\n")
    monkeypatch.chdir(tmp_path)  # not the study's folder
    code, out, err = cli(capsys, "run", "--study", "mine/study.yaml", "--out", "D", "--quiet")
    assert code == 0, err
    assert "proxy proxy on digits" in out


# ---- 7. nothing left behind ------------------------------------------------------------------


def test_a_run_refused_by_ray_leaves_nothing(capsys, tmp_path):
    """Refused after the study was created (Ray checks its cluster's CPUs): the run folder and
    the study in a storage of its own go, so the same command can be retried."""
    out, db = tmp_path / "D", tmp_path / "shared.db"
    argv = ["run", "--backend", "ray", "--cpus-per-trial", "1000", "--trials", "1",
            "--out", str(out), "--storage", f"sqlite:///{db}", "--quiet"]
    assert_error(cli(capsys, *argv), "--cpus-per-trial 1000: the Ray cluster has")
    assert not out.exists()
    assert optuna.get_all_study_summaries(f"sqlite:///{db}") == []


def _ray_on_this_machine() -> bool:
    from ray._private.services import find_gcs_addresses

    return bool(find_gcs_addresses())


def test_a_run_with_no_cluster_to_join_leaves_nothing(capsys, tmp_path, monkeypatch):
    if _ray_on_this_machine():
        pytest.skip("a Ray instance runs on this machine: --address auto would join it")
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    out = tmp_path / "D"
    out.mkdir()  # a folder that was there stays, without the study's files
    assert_error(cli(capsys, "run", "--backend", "ray", "--address", "auto", "--trials", "1",
                     "--out", str(out), "--quiet"), "cannot join the Ray cluster at 'auto'")
    assert list(out.iterdir()) == []


def test_an_address_where_nothing_listens_is_one_line_not_a_hang(capsys, tmp_path):
    import socket

    with socket.socket() as s:  # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "D"
    assert_error(cli(capsys, "run", "--backend", "ray", "--address", f"127.0.0.1:{port}",
                     "--trials", "1", "--out", str(out), "--quiet"),
                 f"cannot join the Ray cluster at '127.0.0.1:{port}': nothing answers there",
                 f"ray start --head --port={port}")
    assert not out.exists()


@NO_GPU
def test_gpus_per_trial_without_a_gpu_leaves_nothing(capsys, tmp_path):
    out = tmp_path / "D"
    assert_error(cli(capsys, "run", "--backend", "ray", "--gpus-per-trial", "0.5", "--trials", "1",
                     "--out", str(out)), "--gpus-per-trial 0.5", "no GPU")
    assert not out.exists()


@pytest.mark.parametrize("scheme", ["sqlite:///", "journal:"])
def test_a_worker_never_creates_a_storage(capsys, tmp_path, scheme):
    path = tmp_path / "wrong.db"
    for where in (path, tmp_path / "wrong" / "path.db"):
        assert_error(cli(capsys, "worker", "--storage", f"{scheme}{where}", "--study", "s"),
                     f"{where} does not exist")
    assert list(tmp_path.iterdir()) == []


# ---- 8. --resume with a wrong name ------------------------------------------------------------


def test_resume_with_a_wrong_name_lists_the_studies(capsys, study_files, tmp_path):
    db = tmp_path / "shared.db"
    optuna.create_study(study_name="other", storage=f"sqlite:///{db}")
    assert_error(cli(capsys, "run", "--study", str(study_files / "study.yaml"), "--resume",
                     "--storage", f"sqlite:///{db}", "--out", str(tmp_path / "D")),
                 "no study named 'tiny'", "studies there: ['other']")



# ---- 9. prepare-data and unreadable images ---------------------------------------------------


def corrupt_imagenet(root):
    """train/ and val/ in ImageNet's layout, with not one readable JPEG."""
    for split in ("train", "val"):
        for i in range(3):
            path = root / split / "n01440764" / f"{i}.JPEG"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(b"\xff\xd8\xff not a jpeg")
    return root


def test_prepare_data_refuses_zero_usable_images(capsys, tmp_path):
    root, out = corrupt_imagenet(tmp_path / "inet"), tmp_path / "C"
    assert_error(cli(capsys, "prepare-data", "imagenet", "--root", str(root), "-o", str(out),
                     "--quiet"), "no readable train images", "3 failed to decode")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["inet"]  # no cache, no temp folder


def test_train_on_unreadable_images_is_one_line(capsys, tmp_path):
    root = corrupt_imagenet(tmp_path / "inet")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # numpy's "mean of empty slice" and such
        result = cli(capsys, "train", "mnasnet_a1", "--data", str(root))
    assert_error(result, "no readable train images")


def _good_imagenet(root):
    from _formats import make_imagenet

    return make_imagenet(root, n_classes=2, train_per_class=2, val_per_class=1, corrupt=False)


def test_prepare_data_suggests_a_proxy_that_fits(capsys, tmp_path):
    root = _good_imagenet(tmp_path / "inet")
    old = os.umask(0o022)
    try:
        code, out, err = cli(capsys, "prepare-data", "imagenet", "--root", str(root),
                             "-o", str(tmp_path / "C"), "--resolution", "32", "--quiet")
    finally:
        os.umask(old)
    assert code == 0, err
    assert stat.S_IMODE((tmp_path / "C").stat().st_mode) == 0o755
    # imagenet100-64px needs 64px and 100 classes: a 32px cache of 2 classes fits no preset
    assert "--proxy imagenet100-64px" not in out
    assert "proxy YAML" in out and "resolution: 32" in out and "classes: 2" in out


def test_prepare_data_refuses_an_existing_cache_without_force(capsys, tmp_path):
    root, out = _good_imagenet(tmp_path / "inet"), tmp_path / "C"
    argv = ["prepare-data", "imagenet", "--root", str(root), "-o", str(out), "--quiet"]
    assert cli(capsys, *argv)[0] == 0
    before = (out / "manifest.json").read_text()
    assert_error(cli(capsys, *argv, "--resolution", "16"), f"{out} already holds a cache",
                 "--force")
    assert (out / "manifest.json").read_text() == before
    assert cli(capsys, *argv, "--resolution", "16", "--force")[0] == 0
    assert '"resolution": 16' in (out / "manifest.json").read_text()


# ---- 10. CondConv2d takes nn.Conv2d's arguments ----------------------------------------------


def _as_static(layer: CondConv2d, **conv_kwargs) -> nn.Conv2d:
    """The nn.Conv2d that a one-expert CondConv2d with routing weight 1 must equal."""
    conv = nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, **conv_kwargs)
    conv.weight.data.copy_(layer.expert_kernels()[0])
    conv.bias.data.copy_(layer.bias[0])
    return conv


@pytest.mark.parametrize("kwargs", [
    {"padding": "same"},
    {"padding": "same", "dilation": 2},
    {"padding": "valid"},
    {"padding": 1, "padding_mode": "reflect"},
    {"padding": (1, 2), "padding_mode": "circular"},
    {"padding": "same", "padding_mode": "replicate"},
    {"padding": 1, "device": "cpu", "dtype": torch.float64},
])
@pytest.mark.parametrize("impl", ["conv", "experts"])
def test_condconv_is_a_drop_in_for_conv2d(kwargs, impl):
    torch.manual_seed(0)
    layer = CondConv2d(8, 16, 3, **kwargs, num_experts=1, routing=None, impl=impl)
    dtype = kwargs.get("dtype", torch.float32)
    assert layer.weight.dtype == dtype
    x = torch.randn(2, 8, 7, 9, dtype=dtype)
    expected = _as_static(layer, **kwargs)(x)
    out = layer(x, torch.ones(2, 1, dtype=dtype))
    assert out.shape == expected.shape
    torch.testing.assert_close(out, expected)


def test_condconv_with_its_own_routing_takes_device_and_dtype():
    layer = CondConv2d(8, 16, 3, padding="same", dtype=torch.float64, num_experts=4)
    assert layer.routing.fc.weight.dtype == torch.float64
    assert layer(torch.randn(2, 8, 5, 5, dtype=torch.float64)).shape == (2, 16, 5, 5)
    assert CondConv2d(8, 16, 3, device="meta").weight.is_meta


@pytest.mark.parametrize("kwargs, message", [
    ({"padding": "same", "stride": 2}, "not supported for strided convolutions"),
    ({"kernel_size": 2, "padding": "same"}, "pads unevenly"),
    ({"padding": "full"}, "'same' or 'valid'"),
    ({"padding_mode": "mirror"}, "padding_mode must be one of"),
])
def test_condconv_refuses_what_it_cannot_do_at_construction(kwargs, message):
    kwargs = {"kernel_size": 3, **kwargs}
    with pytest.raises(ValueError, match=message):
        CondConv2d(8, 16, **kwargs)


# ---- 11. wording, --version, help, run --epochs ----------------------------------------------


def test_madds_shows_small_params_readably(capsys):
    code, out, _ = cli(capsys, "madds", "mobilenet_v1", "--width", "0.25")
    assert code == 0
    assert "0.00M" not in out
    assert "params: 470.1K (470,072)" in out and "       248\n" in out


def test_version(capsys):
    from ccsearch import __version__

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    assert capsys.readouterr().out == f"ccsearch {__version__}\n"


def test_a_bare_ccsearch_prints_the_help(capsys):
    assert main([]) == 2
    err = capsys.readouterr().err
    assert "usage: ccsearch" in err and "prepare-data" in err and "run " in err


def test_run_help_lists_the_studies_and_proxy_presets(capsys):
    with pytest.raises(SystemExit):
        main(["run", "--help"])
    out = " ".join(capsys.readouterr().out.split())  # argparse wraps help text
    for name in ("mnasnet_a1_325m", "mobilenet_v1_routing", "resnet50_experts_grid",
                 "smoke", "imagenet100-64px", "imagenet32", "cifar10"):
        assert name in out


@pytest.mark.parametrize("backend", ["optuna", "ray"])
def test_run_epochs_sets_the_proxy_epochs_and_wording(capsys, study_files, tmp_path, backend):
    out = tmp_path / "D"  # the tiny study's proxy has 2 epochs
    argv = ["run", "--study", str(study_files / "study.yaml"), "--trials", "1", "--epochs", "1",
            "--out", str(out), "--quiet", "--backend", backend]
    code, text, err = cli(capsys, *argv)
    assert code == 0, err
    assert "1 candidate," in text and "no pruning" in text and "1 epoch " in text
    study = optuna.load_study(study_name="tiny", storage=f"sqlite:///{out / 'study.db'}")
    assert [len(r.curve) for r in read_all(study) if r.trained] == [1]
    assert "--from-trial" in text.split("best:")[1]  # the hint retrains the trial, epochs and all
    # one proxy per study: a resume asking for other epochs is refused
    assert_error(cli(capsys, *argv, "--resume", "--trials", "2", "--epochs", "3"),
                 "epochs: the study has 1, this run asks for 3")


def test_train_says_one_epoch(capsys):
    code, out, err = cli(capsys, "train", "mobilenet_v1", "--width", "0.25", "--epochs", "1")
    assert code == 0, err
    assert "1 epoch " in out and "after 1 epoch," in out and "1 epochs" not in out


# ---- 12. train: the proxy's reduced copy and the full model ----------------------------------


def test_train_labels_the_params_of_both_models(capsys):
    from ccsearch import build_model
    from ccsearch.arch import get_backbone
    from ccsearch.train import get_proxy

    spec = get_backbone("mobilenet_v1", 0.25)
    copy = get_proxy("smoke").adapt(spec, 20)  # the smoke proxy trains a half-width copy, 20 glyph classes
    copy_params = sum(p.numel() for p in build_model(copy).parameters())
    full_params = sum(p.numel() for p in build_model(spec).parameters())
    code, out, err = cli(capsys, "train", "mobilenet_v1", "--width", "0.25", "--epochs", "1",
                         "--json")
    assert code == 0, err
    data = json.loads(out)
    assert (data["proxy_params"], data["params"]) == (copy_params, full_params)
    code, out, err = cli(capsys, "train", "mobilenet_v1", "--width", "0.25", "--epochs", "1")
    assert "on a reduced copy of the model (width 0.5x)" in out
    assert (f"params: {copy_params / 1e3:.1f}K in the reduced copy trained (20 classes), 470.1K "
            "in the full model (1000 classes)") in out
