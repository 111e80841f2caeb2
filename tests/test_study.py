"""Study configuration: refused settings, run names and what a resume may change."""

from __future__ import annotations

from dataclasses import replace

import pytest

from ccsearch.errors import UserError
from ccsearch.search.study import StudyConfig


def config(**fields) -> StudyConfig:
    base = dict(name="mnasnet_a1_325m", search_space="mnasnet_a1", budget=325_000_000)
    return StudyConfig(**{**base, **fields})


def test_nsga2_refuses_a_population_of_one():
    with pytest.raises(UserError, match=r"study 'mnasnet_a1_325m'.*population_size.*\b1\b"):
        config(sampler="nsga2", population_size=1)
    assert config(sampler="nsga2", population_size=2).population_size == 2
    assert config(sampler="tpe", population_size=1).population_size == 1  # unused by tpe


@pytest.mark.parametrize(
    "budget, name",
    [
        (325_000_000, "mnasnet_a1_325m"),  # the study's own budget: the study's name
        (300_000_000, "mnasnet_a1_300m"),
        (325_440_000, "mnasnet_a1_325p44m"),
        (325_410_000, "mnasnet_a1_325p41m"),
        (4_100_000_000, "mnasnet_a1_4p1g"),
        (325_412_345, "mnasnet_a1_325p412345m"),
    ],
)
def test_run_name_is_exact(budget, name):
    assert config(budget=budget).run_name(default_budget=325_000_000) == name


def test_run_names_of_close_budgets_differ():
    default = 325_000_000
    names = {config(budget=b).run_name(default) for b in (325_440_000, 325_410_000, 325_400_000)}
    assert len(names) == 3


def test_changes_from_an_equal_config_is_empty():
    stored = config()
    assert stored.changes_from(stored) == []
    assert config(description="other words").changes_from(stored) == []
    assert config(trials=20).changes_from(stored) == []  # more trials: a resume may add them


def test_changes_from_names_each_changed_field_and_both_values():
    stored = config()
    asked = config(budget=300_000_000, proxy="cifar10", seed=3, trials=5, description="x")
    changes = asked.changes_from(stored)
    assert "budget: the study has 325M (325,000,000), this run asks for 300M (300,000,000)" in (
        changes
    )
    assert "proxy: the study has 'smoke', this run asks for 'cifar10'" in changes
    assert "seed: the study has 0, this run asks for 3" in changes
    trials = [c for c in changes if c.startswith("trials:")]
    assert len(trials) == 1 and "12" in trials[0] and "5" in trials[0]
    assert len(changes) == 4


def test_changes_from_shows_an_exact_budget():
    changes = config(budget=325_440_000).changes_from(config(budget=325_410_000))
    assert changes == [
        "budget: the study has 325.41M (325,410,000), this run asks for 325.44M (325,440,000)"
    ]


@pytest.mark.parametrize(
    "field, value",
    [
        ("name", "other"),
        ("search_space", "mobilenet_v2"),
        ("sampler", "tpe"),
        ("pruner", "none"),
        ("convention", "fvcore"),
        ("population_size", 4),
        ("startup_trials", 2),
    ],
)
def test_changes_from_lists_every_other_field(field, value):
    stored = config()
    changes = replace(stored, **{field: value}).changes_from(stored)
    assert len(changes) == 1 and changes[0].startswith(f"{field}: the study has ")
    assert repr(value) in changes[0]


@pytest.mark.parametrize("field", ["trials", "population_size", "startup_trials", "repeats", "epochs"])
def test_study_integer_fields_refuse_true(field):
    with pytest.raises(UserError, match=rf"study 'mnasnet_a1_325m': {field} must be a positive "
                                        r"integer( or null)?, got True"):
        config(**{field: True})


def test_study_seed_refuses_true_and_negatives():
    for value in (True, -1, 1.0):
        with pytest.raises(UserError, match=rf"seed must be an integer >= 0, got {value!r}"):
            config(seed=value)


@pytest.mark.parametrize("field", ["resolution", "epochs", "batch_size", "classes", "images_per_class",
                                   "max_val_images"])
def test_proxy_integer_fields_refuse_true(field):
    from ccsearch.train.proxy import get_proxy

    with pytest.raises(UserError, match=rf"proxy 'smoke': {field} must be a positive integer.*, got True"):
        get_proxy("smoke", **{field: True})


def test_proxy_data_seed_refuses_true():
    from ccsearch.train.proxy import get_proxy

    with pytest.raises(UserError, match=r"proxy 'smoke': data_seed must be an integer >= 0, got True"):
        get_proxy("smoke", data_seed=True)


def test_proxy_is_a_preset_or_a_yaml_file(tmp_path):
    from ccsearch.train.proxy import get_proxy

    with pytest.raises(UserError, match=r"unknown proxy preset 'fast'; presets: smoke.*\(or a \.yaml file\)"):
        get_proxy("fast")
    with pytest.raises(UserError, match=f"proxy file not found: {tmp_path / 'mine.yaml'}"):
        get_proxy(tmp_path / "mine.yaml")
    (tmp_path / "mine.yml").write_text("resolution: 24\n")
    assert get_proxy(str(tmp_path / "mine.yml")).resolution == 24


def test_sampler_seed_streams_differ():
    import optuna

    from ccsearch.search.space import load_search_space

    space = load_search_space("mnasnet_a1")

    def first_draw(seed_stream: int) -> float:
        sampler = config(sampler="random").make_sampler(space, seed_stream=seed_stream)
        return optuna.create_study(sampler=sampler).ask().suggest_float("x", 0, 1)

    assert first_draw(0) == first_draw(0) != first_draw(1)
