"""A run loaded once for drawing: its trials, their records, the results table and front.

A dashboard of many panels reads the storage once per run (``load_run``): with 10,000
trials each extra read would cost seconds.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import optuna
import pandas as pd

from ccsearch.results import best_on_front, pareto_front, records_table
from ccsearch.search.bulk_read import all_trials
from ccsearch.search.record import Status, TrialRecord, read

FINISHED = (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED,
            optuna.trial.TrialState.FAIL)


@dataclass
class RunData:
    """One run, as every panel reads it."""

    name: str  # how plots and the header name the run
    study: optuna.Study
    trials: list[optuna.trial.FrozenTrial]
    records: list[TrialRecord]
    table: pd.DataFrame  # results.records_table
    front: pd.DataFrame  # results.pareto_front

    @property
    def config(self) -> dict:
        return self.study.user_attrs.get("config", {})

    @property
    def budget(self) -> int:
        return int(self.config.get("budget") or 0)

    @property
    def space_name(self) -> str:
        return self.study.user_attrs.get("space", {}).get("name", "")

    @property
    def best(self) -> pd.Series | None:
        return best_on_front(self.front)

    @cached_property
    def trained(self) -> pd.DataFrame:
        """Trained to the end, with a top-1: what the front is drawn from."""
        return self.table[(self.table["status"] == Status.OK.value) & self.table["top1"].notna()]

    @cached_property
    def references(self) -> pd.DataFrame:
        return self.table[self.table["reference"] != ""]

    def measured(self) -> TrialRecord | None:
        """A record that says how accuracy was measured (proxy, data), if any trial has one."""
        return next((r for r in self.records if r.proxy or r.data), None)


def load_run(study: optuna.Study, name: str | None = None, folder: Path | None = None) -> RunData:
    """Read ``study`` once.  Its budget and space come from the study's user attributes,
    which ``ccsearch.search.run.create`` writes; ``folder`` (the run folder) gives each
    trained trial its retrain command."""
    trials = all_trials(study)
    records = [read(t) for t in trials]
    table = records_table(records, folder)
    return RunData(name or study.study_name, study, trials, records, table, pareto_front(table))


def change_mark(study: optuna.Study) -> tuple[int, int]:
    """Changes when a trial is sampled or finishes: when a served dashboard is redrawn."""
    trials = study.get_trials(deepcopy=False)
    return len(trials), sum(t.state in FINISHED for t in trials)
