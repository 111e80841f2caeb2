"""Export, load, checkpoints and latency, against reloaded models in fresh processes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from _study import cli_argv, write_tiny_study

import ccsearch
from ccsearch.arch import ArchSpec, get_backbone
from ccsearch.checkpoint import read_checkpoint
from ccsearch.cli import main
from ccsearch.madds import count_madds
from ccsearch.search import load_study_config
from ccsearch.search import run as search_run
from ccsearch.search.record import Status, read_all
from ccsearch.train import get_proxy, load_proxy_data, train_candidate

FULL_PROXY = (  # the full model (width and depth 1.0) on digits: weights an export can take
    "data: digits\nresolution: 32\nepochs: 2\nbatch_size: 64\nlr: 0.1\ncrop_padding: 1\nflip: false\n"
)
SMALL = ["mobilenet_v1", "--width", "0.25", "--condconv", "12,13", "--experts", "4"]


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> Path:
    """A tiny study searched to the end (3 trained candidates)."""
    tmp = tmp_path_factory.mktemp("run")
    files = write_tiny_study(tmp)
    out = tmp / "run"
    assert main(["run", "--study", str(files / "study.yaml"), "--out", str(out), "--quiet"]) == 0
    return out


def _outputs_in_a_fresh_process(code: str, folder: Path, x: torch.Tensor) -> np.ndarray:
    """Run ``code`` (which defines ``model`` from ``folder``) in a new interpreter on ``x``."""
    np.save(folder.parent / "x.npy", x.numpy())
    script = (
        "import sys, numpy as np, torch\n" + code +
        f"\nx = torch.from_numpy(np.load({str(folder.parent / 'x.npy')!r}))\n"
        f"with torch.no_grad():\n    y = model(x)\nnp.save({str(folder.parent / 'y.npy')!r}, y.numpy())\n"
    )
    subprocess.run([sys.executable, "-c", script], check=True, capture_output=True, timeout=300)
    return np.load(folder.parent / "y.npy")


def test_export_best_loads_back_in_fresh_processes(finished_run, tmp_path, capsys):
    out = tmp_path / "best_model"
    assert main(["export", str(finished_run), "--trial", "best", "-o", str(out)]) == 0
    assert "exported" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir()) == ["arch.json", "model.pt2", "model.safetensors"]
    meta = json.loads((out / "arch.json").read_text())
    records = read_all(search_run.open_folder(finished_run).study)
    best = max((r for r in records if r.status == Status.OK), key=lambda r: (r.top1, -r.madds))
    assert meta["provenance"]["trial"] == best.number and meta["spec"] == best.spec
    assert meta["provenance"]["proxy_top1"] == best.top1 and meta["provenance"]["seed"] == best.seed
    assert meta["madds"] == best.madds and meta["convention"] == "paper"
    assert set(meta["versions"]) == {"ccsearch", "torch", "optuna"}
    assert meta["latency"]["rows"][0]["batch"] == 1

    model = ccsearch.load(out)
    assert count_madds(model).madds == meta["madds"], "fvcore counts the loaded module the same"
    x = torch.randn(3, 3, 224, 224)
    with torch.no_grad():
        expected = model(x).numpy()
    fresh = _outputs_in_a_fresh_process(f"import ccsearch\nmodel = ccsearch.load({str(out)!r})", out, x)
    np.testing.assert_allclose(fresh, expected, atol=1e-5)
    # The program runs with torch alone: importing ccsearch fails in that process.
    program = _outputs_in_a_fresh_process(
        "sys.modules['ccsearch'] = None\n"
        f"model = torch.export.load({str(out / 'model.pt2')!r}).module()", out, x)
    np.testing.assert_allclose(program, expected, atol=1e-5)


def test_calibrated_routing_exports_and_loads_as_the_same_function(tmp_path):
    """``--calibrated-routing`` is part of the architecture: arch.json keeps it, and the
    reloaded module and the torch-only program compute the same calibrated ReLU routing."""
    out = tmp_path / "calibrated"
    argv = [*SMALL, "--routing", "relu", "--calibrated-routing", "-o", str(out)]
    assert main(["export", *argv]) == 0
    meta = json.loads((out / "arch.json").read_text())
    assert meta["spec"]["calibrated_routing"] is True
    raw = get_backbone("mobilenet_v1", 0.25).with_condconv([12, 13], 4, "relu")
    assert meta["madds"] == count_madds(raw).madds  # calibration adds no counted op
    model = ccsearch.load(out)
    assert all(b.routing.calibrated for g in model.groups[11:] for b in g)
    x = torch.randn(2, 3, 224, 224)  # the program's resolution
    with torch.no_grad():
        expected = model(x).numpy()
    program = _outputs_in_a_fresh_process(
        f"model = torch.export.load({str(out / 'model.pt2')!r}).module()", out, x)
    np.testing.assert_allclose(program, expected, atol=1e-5)


def test_trained_weights_export_to_onnx_with_a_dynamic_batch(tmp_path):
    """Train the full model (``--save``), export it with those weights and ``--onnx``:
    onnxruntime agrees with PyTorch at batch sizes 1 and 3."""
    import onnxruntime

    (tmp_path / "full.yaml").write_text(FULL_PROXY)
    ckpt, out = tmp_path / "ckpt", tmp_path / "exported"
    assert main(["train", *SMALL, "--proxy", str(tmp_path / "full.yaml"), "--save", str(ckpt)]) in (0, 1)
    assert main(["export", *SMALL[:1], *SMALL[1:], "--weights", str(ckpt), "--onnx", "-o", str(out)]) == 0
    meta = json.loads((out / "arch.json").read_text())
    assert meta["weights"].startswith("from ") and meta["provenance"]["checkpoint"]["epochs"] == 2
    assert meta["onnx"]["batch"] == "dynamic"
    model = ccsearch.load(out)
    checkpoint = read_checkpoint(ckpt)
    assert model.classifier.out_features == checkpoint.spec.num_classes == 10
    session = onnxruntime.InferenceSession(str(out / "model.onnx"), providers=["CPUExecutionProvider"])
    for n in (1, 3):
        x = torch.randn(n, 3, 224, 224)
        with torch.no_grad():
            expected = model(x).numpy()
        scale = np.abs(expected).max()
        assert scale > 1e-2, "trained logits, not a near-zero fresh head"
        got = session.run(None, {"images": x.numpy()})[0]
        assert np.abs(got - expected).max() <= 1e-4 * max(1.0, scale), "to 1e-4 of the logits' scale"


def test_resume_from_a_checkpoint_continues_exactly(tmp_path):
    """Stopped after epoch 1 and resumed, a run ends where the run without a stop ends."""
    proxy = get_proxy("smoke-digits", epochs=3)
    data = load_proxy_data(proxy)
    spec = get_backbone("mobilenet_v1", 0.25).with_condconv([13], 4, "sigmoid")
    straight = train_candidate(spec, proxy, data, "cpu", seed=3)
    stopped = train_candidate(spec, proxy, data, "cpu", lambda e, t: e == 1, seed=3,
                              save_to=tmp_path / "ckpt")
    assert stopped.status == "pruned" and read_checkpoint(tmp_path / "ckpt").epochs_done == 1
    resumed = train_candidate(spec, proxy, data, "cpu", seed=3,
                              resume=read_checkpoint(tmp_path / "ckpt"))
    assert resumed.curve == straight.curve and resumed.losses == pytest.approx(straight.losses)
    other = get_backbone("mobilenet_v1", 0.25)
    with pytest.raises(ccsearch.UserError, match="not this model"):
        train_candidate(other, proxy, data, "cpu", resume=read_checkpoint(tmp_path / "ckpt"))


def test_export_refuses_bad_input_and_leaves_nothing(finished_run, tmp_path, capsys):
    records = read_all(search_run.open_folder(finished_run).study)
    out = tmp_path / "out"
    infeasible = [r.number for r in records if r.status == Status.INFEASIBLE]
    cases = [(["--trial", str(len(records) + 5)], "the study has trials 0 to"),
             (["--trial", "first"], "use best or a trial number"),
             (["--budget", "1M"], "no trained candidate under 1.0M MADDs")]
    if infeasible:
        cases.append((["--trial", str(infeasible[0])], "was not trained to the end: infeasible"))
    for extra, message in cases:
        assert main(["export", str(finished_run), *extra, "-o", str(out)]) == 2, extra
        assert message in capsys.readouterr().err
        assert not out.exists()
    empty = tmp_path / "empty"  # a run folder whose study trained nothing yet
    (tmp_path / "e").mkdir()
    files = write_tiny_study(tmp_path / "e")
    search_run.create(load_study_config(files / "study.yaml"), empty)
    assert main(["export", str(empty), "-o", str(out)]) == 2
    assert "has no trained candidate" in capsys.readouterr().err
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    assert main(["export", *SMALL, "-o", str(out)]) == 2
    assert "pass --force" in capsys.readouterr().err and (out / "keep.txt").read_text() == "mine"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")], "no temporary left"


@pytest.mark.parametrize("damage", ["truncated", "tampered"])
def test_a_damaged_weights_file_is_one_clear_error(tmp_path, damage):
    out = tmp_path / "m"
    assert main(["export", *SMALL, "-o", str(out)]) == 0
    weights = out / "model.safetensors"
    data = weights.read_bytes()
    if damage == "truncated":
        weights.write_bytes(data[: len(data) // 2])
    else:  # a tensor's shape in the header changed
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
        name = next(k for k in header if k != "__metadata__")
        header[name]["shape"] = [1] * len(header[name]["shape"])
        text = json.dumps(header).encode().ljust(header_len)
        weights.write_bytes(data[:8] + text[:header_len] + data[8 + header_len :])
    with pytest.raises(ccsearch.UserError, match="model.safetensors"):
        ccsearch.load(out)
    result = subprocess.run(cli_argv("latency", str(out), "--batch", "1"), capture_output=True,
                            text=True, timeout=300)
    assert result.returncode == 2 and result.stderr.count("\n") == 1, result.stderr


def test_latency_compares_with_the_backbone_in_one_run(capsys):
    assert main(["latency", *SMALL, "--batch", "1,2", "--threads", "1"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("mobilenet_v1_w0.25 against its backbone") and "1 threads" in lines[0]
    rows = [line.split() for line in lines[2:]]
    assert [r[0] for r in rows] == ["1", "2"]
    spec = ArchSpec.from_dict(get_backbone("mobilenet_v1", 0.25).with_condconv([12, 13], 4).to_dict())
    madds_ratio = count_madds(spec).madds / count_madds(get_backbone("mobilenet_v1", 0.25)).madds
    assert all(r[4] == f"{madds_ratio:.3f}x" for r in rows)
    assert main(["latency", "mobilenet_v1", "--batch", "0"]) == 2


def test_export_a_reference_by_name_with_the_references_top1(tiny_runs, tmp_path, capsys):
    """``--trial baseline`` exports the study's reference; every export's arch.json gives
    the references' proxy top-1 on the same proxy, and its own points over the baseline."""
    records = read_all(search_run.open_folder(tiny_runs[0]).study)
    baseline = next(r for r in records if r.reference == "baseline" and r.status == Status.OK)
    out = tmp_path / "baseline"
    assert main(["export", str(tiny_runs[0]), "--trial", "baseline", "-o", str(out)]) == 0
    meta = json.loads((out / "arch.json").read_text())
    assert meta["spec"] == baseline.spec and meta["provenance"]["trial"] == baseline.number
    assert meta["provenance"]["reference"] == "baseline"
    assert meta["provenance"]["vs_baseline"] == 0.0
    assert meta["provenance"]["references"] == [
        {"name": "baseline", "trial": baseline.number, "proxy_top1": baseline.top1,
         "madds": baseline.madds, "vs_baseline": 0.0}]

    other = next(r for r in records if r.status == Status.OK and not r.reference)
    assert main(["export", str(tiny_runs[0]), "--trial", str(other.number), "-o",
                 str(tmp_path / "other")]) == 0
    meta = json.loads((tmp_path / "other" / "arch.json").read_text())
    assert meta["provenance"]["vs_baseline"] == pytest.approx(other.top1 - baseline.top1)
    assert meta["provenance"]["references"][0]["name"] == "baseline"

    assert main(["export", str(tiny_runs[0]), "--trial", "paper", "-o", str(tmp_path / "p")]) == 2
    assert "use best or a trial number, or a reference: baseline" in capsys.readouterr().err
    assert not (tmp_path / "p").exists()
