"""Faults a long search meets, injected for real: the study stays sound and keeps every
finished trial."""

from __future__ import annotations

import subprocess

from _study import assert_study_sound, cli_argv, load, write_tiny_study


def test_two_runs_started_on_one_folder_at_once_leave_one_sound_study(tmp_path):
    """Whatever the interleaving, one run creates the study and trains it; the other is
    refused with one line (exit 2) and touches nothing of it."""
    files = write_tiny_study(tmp_path, trials=1)
    out = tmp_path / "run"
    argv = cli_argv("run", "--study", str(files / "study.yaml"), "--out", str(out), "--quiet")
    procs = [subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for _ in range(2)]
    ended = [(p.wait(timeout=600), *p.communicate()) for p in procs]
    assert sorted(code for code, _, _ in ended) == [0, 2], ended
    (refused,) = [err for code, _, err in ended if code == 2]
    assert "already holds a study" in refused and "Traceback" not in refused
    assert len(refused.strip().splitlines()) == 1
    assert_study_sound(load(out), trained=1, budget=42_000_000)
    assert (out / "study.yaml").read_text().strip()  # the winner's, whole
