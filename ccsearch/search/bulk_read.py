"""Every trial of a study in one pass over its SQL tables, for tables and dashboards.

Optuna's SQL read (``study.get_trials``) builds an ORM object per row and decodes each
parameter's distribution JSON twice per trial, and a MnasNet-A1 candidate has 26
parameters: a fresh read of 10,000 trials takes about 9 s on 2 cores.  Here the rows come
through SQLAlchemy Core, and each distinct distribution is decoded once.  The result is
what ``study.get_trials(deepcopy=False)`` returns (tests/test_storage.py compares the two
on a real study); storages that are not SQL (journal files, memory) are read by Optuna.

Only readers use this (``ccsearch results``, ``ccsearch dashboard``, a run's outputs):
the search itself reads through Optuna's cached storage, which re-reads only unfinished
trials.
"""

from __future__ import annotations

import json
from collections import defaultdict
from functools import lru_cache

import optuna
import sqlalchemy as sa
from optuna.distributions import BaseDistribution, json_to_distribution
from optuna.storages import RDBStorage
from optuna.storages._rdb import models
from optuna.trial import FrozenTrial


def all_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The study's trials in number order, as ``study.get_trials(deepcopy=False)``."""
    storage = _rdb_storage(study)
    if storage is None:
        return study.get_trials(deepcopy=False)
    study_id = storage.get_study_id_from_name(study.study_name)
    trial = models.TrialModel.__table__
    ids = sa.select(trial.c.trial_id).where(trial.c.study_id == study_id)
    with storage.engine.connect() as db:
        rows = db.execute(sa.select(trial.c.trial_id, trial.c.number, trial.c.state,
                                    trial.c.datetime_start, trial.c.datetime_complete)
                          .where(trial.c.study_id == study_id)
                          .order_by(trial.c.trial_id)).all()
        values = _children(db, models.TrialValueModel, ids, "objective", "value", "value_type")
        params = _children(db, models.TrialParamModel, ids, "param_name", "param_value",
                           "distribution_json", order="param_id")
        user = _children(db, models.TrialUserAttributeModel, ids, "key", "value_json")
        system = _children(db, models.TrialSystemAttributeModel, ids, "key", "value_json")
        steps = _children(db, models.TrialIntermediateValueModel, ids, "step",
                          "intermediate_value", "intermediate_value_type")
    trials = []
    for trial_id, number, state, started, completed in rows:
        objectives = values.get(trial_id)
        ordered = [0.0] * len(objectives) if objectives else None
        for objective, value, kind in objectives or ():
            ordered[objective] = models.TrialValueModel.stored_repr_to_value(value, kind)
        chosen = params.get(trial_id, ())
        trials.append(FrozenTrial(
            number=number, state=state, value=None, values=ordered,
            datetime_start=started, datetime_complete=completed,
            params={name: _distribution(d).to_external_repr(v) for name, v, d in chosen},
            distributions={name: _distribution(d) for name, _, d in chosen},
            user_attrs={key: json.loads(v) for key, v in user.get(trial_id, ())},
            system_attrs={key: json.loads(v) for key, v in system.get(trial_id, ())},
            intermediate_values={
                step: models.TrialIntermediateValueModel.stored_repr_to_intermediate_value(v, k)
                for step, v, k in steps.get(trial_id, ())},
            trial_id=trial_id,
        ))
    return trials


def _rdb_storage(study: optuna.Study) -> RDBStorage | None:
    """The SQL storage under Optuna's cache, or None for any other storage."""
    storage = getattr(study, "_storage", None)  # Study has no public accessor
    storage = getattr(storage, "_backend", storage)  # optuna wraps RDBStorage in a cache
    return storage if isinstance(storage, RDBStorage) else None


def _children(db, model, ids, *columns: str, order: str | None = None) -> dict[int, list[tuple]]:
    """Rows of one per-trial table, grouped by trial id."""
    table = model.__table__
    query = sa.select(table.c.trial_id, *(table.c[c] for c in columns)).where(
        table.c.trial_id.in_(ids))
    if order is not None:
        query = query.order_by(table.c[order])
    grouped: dict[int, list[tuple]] = defaultdict(list)
    for trial_id, *rest in db.execute(query):
        grouped[trial_id].append(tuple(rest))
    return grouped


@lru_cache(maxsize=4096)
def _distribution(text: str) -> BaseDistribution:
    """Distributions are immutable and repeat across trials: decode each text once."""
    return json_to_distribution(text)
