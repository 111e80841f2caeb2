"""The claim policy, retries and pruning peers, driven step by step without training.

The trial steps (``Evaluator.begin/claim/after_epoch/finish``) run on a real Optuna
storage; a schedule decides which trial takes its next step, so checks arrive in any
order, as they do from Ray trials and worker processes.
"""

from __future__ import annotations

import random
import statistics

import optuna
import pytest
from _study import THREE_ARCHITECTURES, write_tiny_study

from ccsearch.search import policy
from ccsearch.search import record as rec
from ccsearch.search import run as search_run
from ccsearch.search.backends import InProcess
from ccsearch.search.objective import Evaluator
from ccsearch.search.pruners import MedianPruner, NoPruner, SuccessiveHalvingPruner, finished_curves
from ccsearch.search.record import Stage, Status, TrialRecord, TrialState
from ccsearch.search.recovery import reap, recover, retry
from ccsearch.search.study import load_study_config
from ccsearch.train import TrainResult

EPOCHS = 2


def fake_result(curve: list[float]) -> TrainResult:
    return TrainResult(status="ok", top1=curve[-1], curve=curve, losses=[1.0] * len(curve),
                       epochs=len(curve), wall_time=0.01, device="cpu")


def fake_trainer(spec, seed, on_epoch):
    """Trains nothing: an accuracy from the architecture's digest, one per epoch."""
    top1 = 50.0 + (hash(spec.to_json()) % 400) / 10
    curve = []
    for epoch in range(1, EPOCHS + 1):
        curve.append(top1)
        if on_epoch(epoch, top1):
            return TrainResult(status="pruned", top1=top1, curve=curve, epochs=epoch)
    return fake_result(curve)


def make_run(tmp_path, trials: int, space: str = THREE_ARCHITECTURES, sampler: str = "random"):
    files = write_tiny_study(tmp_path, trials=trials, sampler=sampler, space=space,
                             budget="44M" if space == THREE_ARCHITECTURES else "42M")
    config = load_study_config(files / "study.yaml")
    return search_run.create(config, tmp_path / "run")


def evaluator(search, pruner=None) -> Evaluator:
    return Evaluator(search.config, search.space, pruner or NoPruner(), EPOCHS,
                     {"proxy": "fake", "data": "none", "device": "cpu"})


def steps(ev: Evaluator, trial: optuna.Trial):
    """One trial as a generator: each ``yield`` is a point where others may act."""
    c = ev.begin(trial)
    yield
    if not ev.claim(c):
        return
    curve = []
    for epoch in range(1, EPOCHS + 1):
        yield
        curve.append(60.0 + epoch)
        if ev.after_epoch(c, epoch, curve[-1]):
            break
    yield
    ev.finish(c, fake_result(curve))


def trained(study) -> list[TrialRecord]:
    return [r for r in rec.read_all(study) if r.trained]


@pytest.mark.parametrize("schedule", range(16))
def test_out_of_order_claims_never_train_more_than_wanted_or_twice(tmp_path, schedule):
    """8 trials near the end of a study that wants 2, stepped in a random order: the
    checks of later trials run before earlier ones have claimed, and the reverse."""
    search = make_run(tmp_path, trials=2)
    ev = evaluator(search)
    rng = random.Random(schedule)
    trials = [rec_ask(search) for _ in range(8)]
    if schedule % 2:
        trials.reverse()  # the highest numbers check first
    live = [steps(ev, t) for t in trials]
    while live:
        step = rng.choice(live)
        try:
            next(step)
        except StopIteration:
            live.remove(step)
    done = trained(search.study)
    assert len(done) <= 2
    assert len({r.digest for r in done}) == len(done), "no architecture trained twice"
    assert not [r for r in rec.read_all(search.study) if r.state == TrialState.RUNNING]
    # The study then completes with exactly 2, whatever the interleaving left.
    InProcess(trainer=fake_trainer).run(search)
    done = trained(search.study)
    assert len(done) == 2 and len({r.digest for r in done}) == 2


def rec_ask(search) -> optuna.Trial:
    from ccsearch.search.recovery import ask

    return ask(search.study)


def test_a_higher_trial_that_checked_first_backs_off_when_a_lower_one_claims(tmp_path):
    search = make_run(tmp_path, trials=1)
    ev = evaluator(search)
    low, high = rec_ask(search), rec_ask(search)
    c_low, c_high = ev.begin(low), ev.begin(high)
    assert ev.claim(c_high)  # sees nothing yet: trains
    assert ev.claim(c_low)  # the lower number wins the slot
    assert ev.after_epoch(c_high, 1, 50.0), "the higher one backs off at its next epoch"
    assert c_high.stop.status == Status.BACKED_OFF
    ev.finish(c_high, fake_result([50.0]))
    assert not ev.after_epoch(c_low, 1, 60.0)
    ev.finish(c_low, fake_result([60.0, 61.0]))
    records = rec.read_all(search.study)
    assert [r.status for r in records] == [Status.OK, Status.BACKED_OFF]
    assert records[1].state == TrialState.PRUNED


def test_a_committing_trial_wins_over_a_lower_one_that_claims_later(tmp_path):
    """The commit check: once a trial writes COMMITTING and reads nothing ahead, a lower
    trial claiming after it must back off, or both would count."""
    search = make_run(tmp_path, trials=1)
    ev = evaluator(search)
    low, high = rec_ask(search), rec_ask(search)
    c_low, c_high = ev.begin(low), ev.begin(high)
    assert ev.claim(c_high)
    c_high.record.stage = Stage.COMMITTING
    rec.write(high, c_high.record)
    assert not ev.claim(c_low)
    assert rec.read(search.study.trials[low.number]).status == Status.BACKED_OFF


def test_policy_check_table():
    def r(number, **kw) -> TrialRecord:
        return TrialRecord(number=number, digest=kw.pop("digest", f"d{number}"), **kw)

    training = {"stage": Stage.TRAINING}
    records = [r(0, status=Status.OK), r(1, **training), r(2, **training), r(3, **training)]
    assert policy.check(2, "d2", records, wanted=3) is policy.GO  # 0 trained, 1 lower
    assert policy.check(3, "d3", records, wanted=3).status == Status.BACKED_OFF
    assert policy.check(3, "d0", records, wanted=9).status == Status.DUPLICATE
    assert policy.check(3, "d1", records, wanted=9).status == Status.BACKED_OFF  # twin training
    assert policy.check(0, "d9", [r(1, stage=Stage.COMMITTING)], wanted=1).status == Status.BACKED_OFF
    assert policy.check(0, "d9", [r(1, state=TrialState.FAIL, stage=Stage.TRAINING)], 1) is policy.GO


def test_a_retry_starts_clean_and_is_made_once(tmp_path):
    search = make_run(tmp_path, trials=3, space="")
    ev = evaluator(search)
    c = ev.start(rec_ask(search))
    ev.after_epoch(c, 1, 40.0)
    ev.interrupt(c, "stopped by Ctrl-C")  # queues the retry
    study = search.study
    assert not retry(study, study.trials[c.record.number]), "an interrupted trial is retried once"
    (waiting,) = [t for t in study.trials if t.state == TrialState.WAITING]
    assert waiting.params == study.trials[c.record.number].params
    assert rec.KEY not in waiting.user_attrs, "no status, stage or curve inherited"
    assert waiting.system_attrs["retry_of"] == c.record.number
    # The retry is interrupted too: retried once more (a chain of two), then never again.
    c2 = ev.start(rec_ask(search))
    assert c2.record.number == waiting.number and c2.record.curve == []
    ev.interrupt(c2, "stopped by Ctrl-C")
    c3 = ev.start(rec_ask(search))
    ev.interrupt(c3, "stopped by Ctrl-C")
    assert not [t for t in study.trials if t.state == TrialState.WAITING], "chains end"
    reap(study)  # a later resume retries nothing again
    assert not [t for t in study.trials if t.state == TrialState.WAITING]


def test_a_trial_that_died_after_recording_its_result_is_kept_not_retrained(tmp_path):
    search = make_run(tmp_path, trials=3, space="")
    ev = evaluator(search)
    c = ev.start(rec_ask(search))
    c.record.status, c.record.top1, c.record.curve = Status.OK, 77.0, [70.0, 77.0]
    rec.write(c.trial, c.record)  # ...and the process dies before telling Optuna
    study = search.study
    study.tell(c.record.number, state=TrialState.FAIL)
    recover(study, study.trials[c.record.number])
    records = rec.read_all(study)
    assert records[0].status == Status.INTERRUPTED
    assert records[1].status == Status.OK and study.trials[1].values == [77.0, records[1].madds]
    assert not [t for t in study.trials if t.state == TrialState.WAITING]


def test_resume_keeps_live_trials_and_fails_dead_ones(tmp_path):
    """A trial held by a live process (here: this one) survives ``--resume``; one whose
    process is gone is failed and retried."""
    search = make_run(tmp_path, trials=3, space="")
    ev = evaluator(search)
    live = ev.start(rec_ask(search))
    dead = ev.start(rec_ask(search))
    dead.record.owner = f"{rec.this_process().rsplit(':', 1)[0]}:999999999"
    rec.write(dead.trial, dead.record)
    resumed, waiting = search_run.resume(search.config, tmp_path / "run")
    states = [t.state for t in resumed.study.trials]
    assert states[live.record.number] == TrialState.RUNNING
    assert states[dead.record.number] == TrialState.FAIL and len(waiting) == 1
    ev.finish(live, fake_result([50.0, 51.0]))  # the live trial still records its result
    assert resumed.study.trials[live.record.number].state == TrialState.COMPLETE


def test_pruner_peers_are_finished_trials_only():
    ok = TrialRecord(number=0, status=Status.OK, curve=[50.0, 60.0])
    partial = [TrialRecord(number=i, status=s, curve=[90.0])
               for i, s in enumerate([None, Status.PRUNED, Status.INTERRUPTED, Status.FAILED], 1)]
    peers = finished_curves([ok, *partial])
    assert peers == [[50.0, 60.0]]
    assert not MedianPruner(startup=2).should_prune(1, 10.0, 2, peers), "startup counts finished only"
    assert MedianPruner(startup=1).should_prune(1, 40.0, 2, peers)
    assert not MedianPruner(startup=1).should_prune(2, 40.0, 2, peers), "never at the last epoch"
    assert SuccessiveHalvingPruner(startup=1).should_prune(1, 40.0, 4, [[50.0], [60.0]])


def test_the_optuna_backend_prunes_with_the_median_rule(tmp_path):
    files = write_tiny_study(tmp_path, pruner="median", trials=6)
    config = load_study_config(files / "study.yaml")
    search = search_run.create(config, tmp_path / "run")
    accuracy = iter([80.0, 70.0, 30.0, 90.0, 20.0, 85.0] + [50.0] * 60)

    def trainer(spec, seed, on_epoch):  # the first architectures score high, later ones low
        top1, curve = next(accuracy), []
        for epoch in range(1, EPOCHS + 1):
            curve.append(top1)
            if on_epoch(epoch, top1):
                return TrainResult(status="pruned", top1=top1, curve=curve, epochs=epoch)
        return fake_result(curve)

    config_startup = search.config.startup_trials
    InProcess(trainer=trainer).run(search)
    records = rec.read_all(search.study)
    pruned = [r for r in records if r.status == Status.PRUNED]
    finished = [r for r in records if r.status == Status.OK]
    assert pruned, "a candidate below the median of finished peers was pruned"
    for r in pruned:
        peers = [p for p in finished if p.number < r.number]
        assert len(peers) >= config_startup
        assert r.curve[0] < statistics.median(p.curve[0] for p in peers)
        assert r.state == TrialState.PRUNED and len(r.curve) == 1
    assert len([r for r in records if r.trained]) == 6


def test_a_worker_stays_and_retrains_the_slot_a_dead_holder_on_another_machine_left(tmp_path):
    """The last slot is held by a trial of another machine whose heartbeat went stale: a
    worker must not leave with the study short; it waits, the trial is failed as stale
    (Optuna's heartbeat check) and its architecture is retried and trained."""
    from optuna.storages import RDBStorage

    search = make_run(tmp_path, trials=1)  # every architecture of this space is feasible
    url = search_run.default_storage(tmp_path / "run")
    storage = RDBStorage(url, heartbeat_interval=1, grace_period=2, heartbeat_stale_trial_callback=recover)
    study = optuna.load_study(study_name="tiny", storage=storage, sampler=search.study.sampler)
    other = search_run.SearchRun(study, storage, search.config, search.space, url, tmp_path / "run")
    ev = evaluator(other)
    ev.owner = "another-machine:1"
    held = ev.start(rec_ask(other))  # claims the only slot, then its machine goes away
    trial_id = storage.get_trial_id_from_study_id_trial_number(
        storage.get_study_id_from_name("tiny"), held.record.number)
    storage.record_heartbeat(trial_id)  # its last heartbeat
    InProcess(trainer=fake_trainer).run(other)
    records = rec.read_all(study)
    assert records[held.record.number].status == Status.INTERRUPTED
    (done,) = [r for r in records if r.trained]
    assert study.trials[done.number].system_attrs["retry_of"] == held.record.number


def test_a_study_of_500_trials_decodes_only_its_unfinished_trials_per_check(tmp_path, monkeypatch):
    """The claim and every epoch's re-check read the whole study; a finished trial never
    changes, so each check decodes only the trials still running or waiting: no O(n^2)
    over a study."""
    search = make_run(tmp_path, trials=600)
    done = TrialRecord(spec={"name": "x", "groups": []}, digest="old", madds=1, status=Status.OK,
                       top1=50.0, curve=[50.0], epochs=1)
    search.study.add_trials([optuna.trial.create_trial(
        state=TrialState.COMPLETE, values=[50.0, 1.0],
        user_attrs={rec.KEY: {**done.to_dict(), "digest": f"old{i}"}}) for i in range(500)])
    decoded = []
    real = TrialRecord.from_dict
    monkeypatch.setattr(TrialRecord, "from_dict",
                        staticmethod(lambda *a, **k: decoded.append(1) or real(*a, **k)))
    ev = evaluator(search)
    for _ in range(3):  # three candidates, each claimed, re-checked per epoch and finished
        c = ev.start(search.study.ask())
        assert c is not None
        before = len(decoded)
        for epoch in range(1, EPOCHS + 1):
            assert not ev.after_epoch(c, epoch, 60.0 + epoch)
        assert len(decoded) - before <= 2 * EPOCHS, "only the running trial is decoded again"
        ev.finish(c, fake_result([61.0, 62.0]))
    assert len(decoded) < 500 + 60, "each finished trial decoded about once"
    before = len(decoded)
    for _ in range(10):  # what a backend's loop reads before every trial it asks for
        assert sum(r.trained for r in search.records()) == 503
    assert len(decoded) - before <= 503 + 10, "the run's reads decode each finished trial once"


def _write_transactions(engine) -> tuple[list[str], callable]:
    """Every committed transaction that wrote, as the tables it wrote, from SQLAlchemy's
    own events on the storage's engine."""
    from sqlalchemy import event

    committed, pending = [], set()

    def statement(conn, cursor, sql, params, context, many):
        words = sql.split()
        if words[0].upper() in ("INSERT", "UPDATE", "DELETE"):
            pending.add(words[2] if words[0].upper() in ("INSERT", "DELETE") else words[1])

    def commit(conn):
        if pending:
            committed.append(",".join(sorted(pending)))
        pending.clear()

    event.listen(engine, "before_cursor_execute", statement)
    event.listen(engine, "commit", commit)

    def stop():
        event.remove(engine, "before_cursor_execute", statement)
        event.remove(engine, "commit", commit)

    return committed, stop


def test_a_trained_trial_writes_its_record_3_times_plus_once_per_epoch(tmp_path):
    """The claim, each epoch, the commit and the end: the record is written 3 + E times,
    and the whole trial (ask, its parameters, its constraint, its tell) stays within a
    fixed number of transactions more."""
    search = make_run(tmp_path, trials=5)
    ev = evaluator(search)
    committed, stop = _write_transactions(search.storage.engine)
    try:
        trial = search.study.ask()
        c = ev.start(trial)
        assert c is not None
        for epoch in range(1, EPOCHS + 1):
            assert not ev.after_epoch(c, epoch, 60.0 + epoch)
        ev.finish(c, fake_result([61.0, 62.0]))
    finally:
        stop()
    record_writes = [t for t in committed if t == "trial_user_attributes"]
    assert len(record_writes) == 3 + EPOCHS
    params = len(trial.params)
    assert len(committed) <= 3 + EPOCHS + params + 4, committed  # + ask, constraint, tell, values
    assert rec.read(search.study.trials[trial.number]).status == Status.OK


def test_an_over_budget_trial_writes_its_sampled_parameters_in_one_transaction(tmp_path):
    """A MnasNet-A1 candidate has about 13 parameters: Optuna writes each in a
    transaction of its own, ccsearch's storage writes them together.  An over-budget
    trial is then 6 transactions: the ask, NSGA-II's generation tag, its parameters with
    its first record, its constraint, its last record and its tell."""
    from dataclasses import replace

    config = replace(load_study_config("mnasnet_a1_325m"), name="over", budget=1_000_000,
                     references={})
    search = search_run.create(config, tmp_path / "run")
    ev = evaluator(search)
    committed, stop = _write_transactions(search.storage.engine)
    try:
        trials = [search.study.ask() for _ in range(3)]
        for trial in trials:
            assert ev.start(trial) is None  # over the budget: never trained
    finally:
        stop()
    assert all(len(t.params) >= 7 for t in trials)
    # the parameters go with the first record (its owner), before the MADD count
    assert [t for t in committed if "trial_params" in t] == [
        "trial_params,trial_user_attributes"] * 3
    assert len(committed) == 6 * 3, ";".join(committed)
    for trial in search.study.trials:
        assert rec.read(trial).status == Status.INFEASIBLE
        assert trial.params == next(t.params for t in trials if t.number == trial.number)
