"""Proxy scores people can trust: a trial retrains to its recorded top-1, a candidate can
train with several seeds, references train first, and ``proxy-check`` measures how the
proxy ranks candidates from seed to seed."""

from __future__ import annotations

import itertools
import json
import statistics

import pytest
from _study import THREE_ARCHITECTURES, load, write_tiny_study
from test_newcomer import assert_error, cli

from ccsearch.arch import get_backbone
from ccsearch.search.proxy_check import predicted_tau_of_means, rank_stability, repeats_for
from ccsearch.search.record import Status, TrialRecord, read_all


def _run(capsys, files, *extra: str) -> tuple[int, str, str]:
    return cli(capsys, "run", "--study", str(files / "study.yaml"), "--out", str(files / "run"),
               "--quiet", *extra)


def test_a_trial_retrains_to_its_recorded_top1_exactly(capsys, tmp_path):
    """The ``best:`` line's command gives the trial's curve again, bit for bit."""
    files = write_tiny_study(tmp_path, sampler="grid", trials=2, space=THREE_ARCHITECTURES,
                             budget="44M")
    code, text, err = _run(capsys, files)
    assert code == 0, err
    records = read_all(load(files / "run"))
    best = int(text.split("best:")[1].split("(trial ")[1].split(",")[0])
    command = text.split("retrain it: ")[1].split(")")[0]
    assert command == f"ccsearch train --from-trial {files / 'run'} {best}"
    record = records[best]
    assert record.data_checksum and record.threads >= 1 and record.versions["torch"]
    assert record.seeds == [1], "every candidate trains with the study's seed"
    code, text, err = cli(capsys, *command.split()[1:])
    assert code == 0, err
    assert f"reproduced trial {best} exactly" in text, text
    assert "warning" not in err
    # A retraining on other threads is told it may differ before it trains.
    other = 2 if record.threads == 1 else 1
    code, text, err = cli(capsys, *command.split()[1:], "--threads", str(other))
    assert f"{other} threads, the trial ran on {record.threads}" in err


def test_a_study_keeps_the_proxy_it_was_made_with(capsys, tmp_path):
    """A proxy YAML edited after the study began (or a preset an upgrade changed): the
    resume and a worker refuse, naming the field, and ``--from-trial`` still retrains with
    the proxy the trial had, to its recorded top-1."""
    files = write_tiny_study(tmp_path, sampler="grid", trials=1, space=THREE_ARCHITECTURES,
                             budget="44M")
    code, text, err = _run(capsys, files)
    assert code == 0, err
    trained = [r for r in read_all(load(files / "run")) if r.trained]
    proxy = files / "proxy.yaml"
    proxy.write_text(proxy.read_text().replace("lr: 0.1", "lr: 0.3"))
    assert_error(_run(capsys, files, "--resume", "--trials", "2"),
                 "--resume cannot change the study: proxy:", "lr 0.1 -> 0.3")
    assert_error(cli(capsys, "worker", "--storage", f"sqlite:///{files / 'run' / 'study.db'}",
                     "--study", "tiny", "--quiet"), "cannot join study 'tiny'", "lr 0.1 -> 0.3")
    assert len(read_all(load(files / "run"))) == len(trained), "nothing added to the study"
    code, text, err = cli(capsys, "train", "--from-trial", str(files / "run"),
                          str(trained[0].number))
    assert code == 0, err
    assert f"reproduced trial {trained[0].number} exactly" in text, text


def test_from_trial_refuses_what_it_cannot_reproduce(capsys, tmp_path, tiny_runs):
    run = str(tiny_runs[0])  # a real run; nothing here trains
    assert_error(cli(capsys, "train", "--from-trial", run, "99"), "the study has trials 0 to")
    assert_error(cli(capsys, "train", "--from-trial", run, "x"), "N must be a trial number")
    assert_error(cli(capsys, "train", "mobilenet_v1", "--from-trial", run, "0"), "drop MODEL")
    assert_error(cli(capsys, "train", "--from-trial", run, "0", "--seed", "3"), "drop --seed")
    # The options' defaults given explicitly are still options the trial does not take.
    assert_error(cli(capsys, "train", "--from-trial", run, "0", "--seed", "0"), "drop --seed")
    assert_error(cli(capsys, "train", "--from-trial", run, "0", "--repeats", "1"), "drop --seed")
    assert_error(cli(capsys, "train", "--from-trial", run, "0", "--proxy", "smoke"), "drop --proxy")
    assert_error(cli(capsys, "train", "--from-trial", str(tmp_path), "0"), "is not a run folder")
    assert_error(cli(capsys, "train"), "needs MODEL")


def test_repeats_train_every_seed_and_the_study_uses_their_mean(capsys, tmp_path):
    files = write_tiny_study(tmp_path, sampler="grid", trials=2, space=THREE_ARCHITECTURES,
                             budget="44M")
    with open(files / "study.yaml", "a") as f:
        f.write("repeats: 2\n")
    code, text, err = _run(capsys, files, "--epochs", "1")
    assert code == 0, err
    study = load(files / "run")
    trained = [r for r in read_all(study) if r.status == Status.OK]
    assert len(trained) == 2
    for r in trained:
        assert r.seeds == [1, 2] and len(r.seed_top1) == 2 and len(r.seed_curves) == 2
        assert r.top1 == pytest.approx(statistics.fmean(r.seed_top1))
        assert r.top1_std == pytest.approx(statistics.stdev(r.seed_top1))
        assert r.curve == pytest.approx([statistics.fmean(c) for c in zip(*r.seed_curves, strict=True)])
        assert r.seed_curves[0][-1] == r.seed_top1[0]
        # NSGA-II and the front see the mean
        assert study.trials[r.number].values == [r.top1, r.madds]
    # The seeds are the runs `ccsearch train --seed S` gives on its own.
    best = max(trained, key=lambda r: r.top1)
    code, text, err = cli(capsys, "train", "--from-trial", str(files / "run"), str(best.number))
    assert code == 0 and f"reproduced trial {best.number} exactly" in text, text + err


def test_references_train_first_and_do_not_count_towards_trials(capsys, tmp_path):
    files = write_tiny_study(tmp_path, trials=2, budget="44M")
    with open(files / "study.yaml", "a") as f:
        f.write("references:\n  baseline: {model: mobilenet_v1, width: 0.25}\n"
                "  layer13: {model: mobilenet_v1, width: 0.25, condconv: '13', experts: 4}\n")
    code, text, err = _run(capsys, files, "--epochs", "1")
    assert code == 0, err
    records = read_all(load(files / "run"))
    assert [r.reference for r in records[:2]] == ["baseline", "layer13"]
    assert records[0].spec["groups"] == get_backbone("mobilenet_v1", 0.25).to_dict()["groups"]
    assert [g["experts"] for g in records[1].spec["groups"]][12] == 4
    assert sum(r.trained for r in records) == 4, "2 references + the study's 2 trials"
    assert not any(r.reference for r in records[2:])
    # a bad reference is one line, before anything is written
    with open(files / "study.yaml", "a") as f:
        f.write("  broken: {model: mobilenet_v1, expert: 4}\n")
    assert_error(_run(capsys, files, "--out", str(tmp_path / "other")), "reference 'broken'",
                 "unknown fields ['expert']")
    assert not (tmp_path / "other").exists()


def _kendall(x: list[float], y: list[float]) -> float:
    """Kendall's tau-b by counting pairs: the reference for scipy's."""
    concordant = discordant = ties_x = ties_y = 0
    for i, j in itertools.combinations(range(len(x)), 2):
        dx, dy = x[i] - x[j], y[i] - y[j]
        if dx == 0 and dy == 0:
            continue
        if dx == 0:
            ties_x += 1
        elif dy == 0:
            ties_y += 1
        elif dx * dy > 0:
            concordant += 1
        else:
            discordant += 1
    n0 = concordant + discordant
    return (concordant - discordant) / ((n0 + ties_x) * (n0 + ties_y)) ** 0.5


def test_proxy_check_reports_rank_stability(capsys, tmp_path):
    files = write_tiny_study(tmp_path, budget="44M")
    out = tmp_path / "check"
    code, text, err = cli(capsys, "proxy-check", "--study", str(files / "study.yaml"),
                          "--candidates", "4", "--seeds", "2", "--epochs", "1", "--out", str(out),
                          "--quiet")
    assert code == 0, err
    assert "Kendall tau" in text and "Spearman rho" in text and "noise floor" in text
    report = json.loads((out / "proxy_check.json").read_text())
    rows = report["rows"]
    assert len(rows) == report["candidates"] >= 3 and report["seeds"] == 2
    assert [r["reference"] for r in rows].count("baseline") == 1
    a, b = [r["seed_top1"][0] for r in rows], [r["seed_top1"][1] for r in rows]
    assert report["kendall_tau"] == pytest.approx(_kendall(a, b))
    assert report["noise_floor"] == pytest.approx(statistics.median(abs(x - y) for x, y in zip(a, b, strict=True)))
    assert (out / "results.csv").is_file(), "a run folder like a search's"


@pytest.mark.parametrize(("args", "message"), [
    (["--candidates", "2"], "--candidates must be an integer >= 3"),
    (["--seeds", "1"], "--seeds must be an integer >= 2"),
    (["--study", "mnasnet_a1_325m", "--space", "mnasnet_a1"], "--study or --space, not both"),
    (["--space", "no_such_space"], "no_such_space"),
])
def test_proxy_check_refuses_bad_arguments(capsys, tmp_path, args, message):
    assert_error(cli(capsys, "proxy-check", *args, "--out", str(tmp_path / "x")), message)
    assert not (tmp_path / "x").exists()


def test_proxy_check_measures_how_means_of_seeds_rank():
    """With 4 seeds, the tau of `repeats: 2` is measured: between the means of seeds {0, 1}
    and {2, 3}, {0, 2} and {1, 3}, {0, 3} and {1, 2}, by counting pairs."""
    seed_top1 = [[80.0, 82.0, 79.0, 81.0], [70.0, 75.0, 78.0, 64.0], [60.0, 71.0, 58.0, 77.0],
                 [40.0, 66.0, 30.0, 55.0], [50.0, 20.0, 62.0, 35.0]]
    records = [TrialRecord(number=i, status=Status.OK, seed_top1=t, top1=statistics.fmean(t),
                           reference="baseline" if i == 0 else "")
               for i, t in enumerate(seed_top1)]
    report = rank_stability(records)
    splits = [((0, 1), (2, 3)), ((0, 2), (1, 3)), ((0, 3), (1, 2))]
    expected = statistics.fmean(
        _kendall(*([statistics.fmean(t[s] for s in group) for t in seed_top1] for group in split))
        for split in splits)
    assert report.means_tau == {2: pytest.approx(expected)}
    pairs = list(itertools.combinations(range(4), 2))
    assert report.kendall_tau == pytest.approx(statistics.fmean(
        _kendall([t[a] for t in seed_top1], [t[b] for t in seed_top1]) for a, b in pairs))
    three_seeds = [TrialRecord(number=r.number, status=Status.OK, seed_top1=r.seed_top1[:3],
                               top1=r.top1) for r in records]
    assert rank_stability(three_seeds).means_tau == {}, "two disjoint groups need 4 seeds"


def test_predicted_tau_of_means_agrees_with_the_repeats_recommended():
    assert predicted_tau_of_means(0.47, 1) == pytest.approx(0.47)
    assert predicted_tau_of_means(0.47, 3) < 0.7 <= predicted_tau_of_means(0.47, 4)
    assert predicted_tau_of_means(-0.2, 3) == -0.2, "no agreement: means do not help"


def test_repeats_needed_for_a_target_tau():
    assert repeats_for(0.8) == 1
    assert repeats_for(0.0) is None and repeats_for(-0.2) is None
    # tau 0.47 -> r = sin(0.235 pi) = 0.672; target r = sin(0.35 pi) = 0.891:
    # n = 0.891 * 0.328 / (0.672 * 0.109) = 3.99 -> 4
    assert repeats_for(0.47) == 4
