"""The ``ccsearch`` command line: outputs, JSON, and one-line errors with exit code 2."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from ccsearch.arch import get_backbone
from ccsearch.cli import main


def run_main(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_madds_json_for_the_paper_model(capsys):
    code, out, _ = run_main(
        capsys, "madds", "mnasnet_a1", "--condconv", "6,7", "--experts", "8", "--json"
    )
    assert code == 0
    data = json.loads(out)
    assert data["convention"] == "paper"
    assert data["madds"] == pytest.approx(325e6, rel=0.015)
    assert data["params"] > 10_000_000
    assert [g["index"] for g in data["groups"]] == list(range(1, 8))
    assert data["groups"][5]["block"].endswith("cc8_sigmoid")
    assert data["spec"]["groups"][6]["experts"] == 8


def test_madds_table_names_the_convention(capsys):
    code, out, _ = run_main(
        capsys,
        "madds",
        "mobilenet_v1",
        "--width",
        "0.25",
        "--condconv",
        "13",
        "--experts",
        "32",
        "--routing",
        "tanh",
    )
    assert code == 0
    assert "paper convention" in out and "kernel mixing" in out
    assert "dsa_r1_k3_s1_e1_c256_noskip_cc32_tanh" not in out  # noskip comes last in strings
    assert "dsa_r1_k3_s1_e1_c256_cc32_tanh_noskip" in out
    code, out, _ = run_main(capsys, "madds", "mnasnet_a1", "--convention", "fvcore")
    assert "fvcore convention" in out


def test_madds_reads_a_spec_file(capsys, tmp_path):
    path = tmp_path / "cand.json"
    get_backbone("mnasnet_a1").with_condconv([7], 4).save(path)
    code, out, _ = run_main(capsys, "madds", str(path), "--json")
    assert code == 0
    assert json.loads(out)["groups"][6]["block"].endswith("cc4_sigmoid")


def test_backbones_lists_every_backbone_and_its_groups(capsys):
    code, out, _ = run_main(capsys, "backbones")
    assert code == 0
    assert "mnasnet_a1: 7 block groups (16, 24, 40, 80, 112, 160, 320 channels)" in out
    assert "mobilenet_v1: 13 block groups" in out
    for name in ("mobilenet_v2", "efficientnet_b0", "resnet50"):
        assert name in out
    code, out, _ = run_main(capsys, "backbones", "--json")
    assert len(json.loads(out)["mnasnet_a1"]["groups"]) == 7


@pytest.mark.parametrize(
    "argv, message",
    [
        (["madds", "mnasnet_b9"], "unknown backbone 'mnasnet_b9'"),
        (["madds", "mnasnet_a1", "--condconv", "8"], "block group 8 does not exist"),
        (["madds", "mnasnet_a1", "--condconv", "0"], "block group 0 does not exist"),
        (["madds", "mnasnet_a1", "--condconv", "six"], "'six' is not a block-group number"),
        (
            ["madds", "mnasnet_a1", "--condconv", "6", "--experts", "0"],
            "experts must be an integer >= 1, got 0",
        ),
        (["madds", "mnasnet_a1", "--experts", "4"], "need --condconv"),
        (["madds", "missing.json"], "missing.json"),
        (["madds", "mnasnet_a1", "--resolution", "8"], "resolution must be"),
    ],
)
def test_user_errors_are_one_line_exit_2(capsys, argv, message):
    code, out, err = run_main(capsys, *argv)
    assert code == 2
    assert message in err
    assert err.count("\n") == 1 and "Traceback" not in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (
            ["madds", "mnasnet_a1", "--condconv", "6", "--experts", "2.5"],
            "invalid int value: '2.5'",
        ),
        (["madds", "mnasnet_a1", "--condconv", "6", "--routing", "gelu"], "invalid choice: 'gelu'"),
    ],
)
def test_argument_errors_are_one_line_exit_2(capsys, argv, message):
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_console_script_exit_code():
    """The installed entry point, as a user runs it."""
    ok = subprocess.run(
        [sys.executable, "-m", "ccsearch.cli", "madds", "mobilenet_v2", "--json"],
        capture_output=True,
        text=True,
    )
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["madds"] == pytest.approx(301e6, rel=0.005)
    bad = subprocess.run(
        [sys.executable, "-m", "ccsearch.cli", "madds", "nope"], capture_output=True, text=True
    )
    assert bad.returncode == 2
    assert (
        bad.stderr.strip()
        == "ccsearch: error: unknown backbone 'nope'; shipped: mnasnet_a1, mobilenet_v1, mobilenet_v2, efficientnet_b0, resnet50"
    )
