"""Property-based tests (hypothesis) of every input a user writes: the budget, the YAML
files (search space, study, proxy, dashboard), specs and ``arch.json``, and the command
line.  Each input either works or is refused with one ``UserError`` line (exit code 2 on
the command line): never a traceback, never a half-written run folder or export.

Derandomized, so CI runs the same cases every time; the counts are printed at the end.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
import yaml
from _cases import CASES
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

import ccsearch
from ccsearch.arch import BACKBONES, ArchSpec, BlockGroup
from ccsearch.arch.spec import ACTIVATIONS, BLOCK_TYPES, HEAD_SCALINGS
from ccsearch.cli import main
from ccsearch.dashboard.config import load_dashboard
from ccsearch.errors import UserError
from ccsearch.layers import ROUTING_ACTIVATIONS
from ccsearch.madds import exact_madds_label, parse_madds
from ccsearch.search import load_search_space, load_study_config
from ccsearch.search.space import SearchSpace
from ccsearch.search.study import StudyConfig
from ccsearch.train import ProxyConfig, get_proxy

CHECKED = settings(max_examples=300, deadline=None, derandomize=True,
                   suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
SLOW = settings(CHECKED, max_examples=60)  # each case builds or counts a model

# Values YAML and JSON can hold, the odd ones a typo makes included.
scalars = st.one_of(st.none(), st.booleans(), st.integers(-10**12, 10**12),
                    st.floats(allow_nan=True, allow_infinity=True), st.text(max_size=12),
                    st.sampled_from(["all", "sigmoid", "relu", "mnasnet_a1", "325M", "1e3", "-1",
                                     "0", "digits", "none", "backbone", "any", "one"]))
values = st.recursive(scalars, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)


def fields_of(*known: str):
    """Mappings of a file's real field names (and a few unknown ones) to any values."""
    names = st.sampled_from(known) | st.text(min_size=1, max_size=8)
    return st.dictionaries(names, values, max_size=6)


def works_or_refused(load, *args):
    """``load(*args)``, or None when it refuses with one line."""
    try:
        return load(*args)
    except UserError as err:
        assert str(err) and "\n" not in str(err).strip(), repr(str(err))
        return None


# ---- the budget --------------------------------------------------------------------------

budget_texts = st.one_of(
    st.text(max_size=14),
    st.builds(lambda n, unit: f"{n}{unit}",
              st.one_of(st.integers(-10**6, 10**13), st.decimals(allow_nan=True, places=3),
                        st.floats(allow_nan=True, allow_infinity=True)),
              st.sampled_from(["", "k", "K", "M", "m", "G", "g", " M", "MM", "e6", "T"])))


@CHECKED
@given(budget_texts)
def test_a_budget_is_read_exactly_or_refused(text):
    CASES["budget text"] += 1
    value = works_or_refused(parse_madds, text)
    if value is not None:
        assert isinstance(value, int) and value > 0
        assert parse_madds(exact_madds_label(value)) == value


@CHECKED
@given(st.integers(1, 10**15))
def test_every_whole_budget_reads_back_from_its_label(n):
    CASES["budget label round trip"] += 1
    assert parse_madds(exact_madds_label(n)) == n
    assert parse_madds(str(n)) == n


# ---- YAML files --------------------------------------------------------------------------

def _write(tmp_path: Path, name: str, data) -> Path:
    path = tmp_path / name
    path.write_text(data if isinstance(data, str) else yaml.safe_dump(data))
    return path


yaml_texts = st.text(alphabet=st.sampled_from(list("ab:-[]{}#'\" \n\t0.!&*|>%@`,?")), max_size=40)
SPACE_FIELDS = tuple(set(SearchSpace.__dataclass_fields__) - {"source"})
STUDY_FIELDS = tuple(StudyConfig.__dataclass_fields__)
PROXY_FIELDS = tuple(ProxyConfig.__dataclass_fields__)


@CHECKED
@given(fields_of(*SPACE_FIELDS) | yaml_texts, st.sampled_from(["mnasnet_a1", "mobilenet_v1", None]))
def test_a_search_space_file_loads_or_is_refused(tmp_path, data, backbone):
    CASES["search space YAML"] += 1
    if isinstance(data, dict) and backbone:
        data.setdefault("backbone", backbone)
    space = works_or_refused(load_search_space, _write(tmp_path, "space.yaml", data))
    if space is not None:
        assert space.groups and space.experts and space.routing


@CHECKED
@given(fields_of(*STUDY_FIELDS) | yaml_texts, st.booleans())
def test_a_study_file_loads_or_is_refused(tmp_path, data, with_space):
    CASES["study YAML"] += 1
    if isinstance(data, dict) and with_space:
        data.setdefault("search_space", "mnasnet_a1")
        data.setdefault("budget", "325M")
    config = works_or_refused(load_study_config, _write(tmp_path, "study.yaml", data))
    if config is not None:
        works_or_refused(config.reference_specs)
        works_or_refused(config.space)


@CHECKED
@given(fields_of(*PROXY_FIELDS) | yaml_texts)
def test_a_proxy_file_loads_or_is_refused(tmp_path, data):
    CASES["proxy YAML"] += 1
    proxy = works_or_refused(get_proxy, _write(tmp_path, "proxy.yaml", data))
    if proxy is not None:
        assert proxy.epochs >= 1 and proxy.lr > 0


@CHECKED
@given(fields_of("panels", "title", "description") | yaml_texts
       | st.fixed_dictionaries({"panels": st.lists(st.sampled_from(["pareto", "table", "curves", "x"]) | st.text(max_size=5), max_size=4)}))
def test_a_dashboard_file_loads_or_is_refused(tmp_path, data):
    CASES["dashboard YAML"] += 1
    dashboard = works_or_refused(load_dashboard, _write(tmp_path, "board.yaml", data))
    if dashboard is not None:
        assert dashboard.panels


# ---- specs and arch.json -----------------------------------------------------------------

groups = st.builds(
    BlockGroup, block=st.sampled_from(BLOCK_TYPES), repeats=st.integers(1, 3),
    kernel=st.sampled_from([1, 3, 5, 7]), stride=st.integers(1, 2), channels=st.integers(1, 48),
    expansion=st.sampled_from([1.0, 2.0, 4.0, 6.0]), se=st.sampled_from([0.0, 0.25]),
    experts=st.sampled_from([0, 1, 2, 4]), routing=st.sampled_from(ROUTING_ACTIVATIONS),
    skip=st.booleans())
specs = st.builds(
    ArchSpec, name=st.text(min_size=1, max_size=8), groups=st.lists(groups, min_size=1, max_size=3),
    stem_channels=st.integers(1, 32), head_channels=st.integers(0, 64),
    head_scaling=st.sampled_from(HEAD_SCALINGS), num_classes=st.integers(1, 20),
    activation=st.sampled_from(ACTIVATIONS), calibrated_routing=st.booleans())


@CHECKED
@given(specs)
def test_every_valid_spec_reads_back_from_its_json_and_block_strings(spec):
    CASES["spec round trip"] += 1
    assert ArchSpec.from_json(spec.to_json()) == spec
    for g in spec.groups:  # a static group's string names no routing: it has none
        assert BlockGroup.from_string(g.to_string()) == (g if g.experts else replace(g, routing="sigmoid"))


SPEC_FIELDS = tuple(ArchSpec.__dataclass_fields__)
GROUP_FIELDS = tuple(BlockGroup.__dataclass_fields__)


@CHECKED
@given(specs, st.sampled_from(SPEC_FIELDS + GROUP_FIELDS + ("typo",)), values)
def test_a_spec_with_any_field_changed_loads_or_is_refused(spec, field, value):
    CASES["spec field changed"] += 1
    data = spec.to_dict()
    (data["groups"][0] if field in GROUP_FIELDS else data)[field] = value
    works_or_refused(ArchSpec.from_dict, data)
    works_or_refused(ArchSpec.from_json, json.dumps(data)[: len(json.dumps(data)) // 2])


@CHECKED
@given(st.text(max_size=30) | st.lists(st.text(max_size=6), max_size=4).map("_".join))
def test_a_block_string_parses_or_is_refused(text):
    CASES["block string"] += 1
    works_or_refused(BlockGroup.from_string, text)


@pytest.fixture(scope="module")
def export_folder(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("export") / "model"
    assert main(["export", "mobilenet_v1", "--width", "0.25", "--condconv", "13", "--experts", "2",
                 "-o", str(out)]) == 0
    return out


@SLOW
@given(st.sampled_from(SPEC_FIELDS + GROUP_FIELDS + ("spec", "typo")),
       st.one_of(scalars, st.integers(1, 64), st.sampled_from(["relu", "ds", "ir", 0.5, [], {}])))
def test_an_export_with_any_arch_json_field_changed_loads_or_is_refused(export_folder, tmp_path, field, value):
    CASES["arch.json field changed"] += 1
    folder = tmp_path / "changed"
    shutil.rmtree(folder, ignore_errors=True)
    shutil.copytree(export_folder, folder)
    meta = json.loads((folder / "arch.json").read_text())
    if field == "spec":
        meta["spec"] = value
    else:
        (meta["spec"]["groups"][-1] if field in GROUP_FIELDS else meta["spec"])[field] = value
    (folder / "arch.json").write_text(json.dumps(meta))
    works_or_refused(ccsearch.load, folder)


# ---- the command line --------------------------------------------------------------------

def _exit_code(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as done:  # argparse's usage errors
        code = done.code
    err = capsys.readouterr().err
    return code, err


def _assert_one_line_or_works(code: int, err: str) -> None:
    assert code in (0, 2), (code, err)
    assert "Traceback" not in err
    if code == 2:
        assert len(err.strip().split("\n")) == 1, err


option_values = st.one_of(st.text(max_size=8), st.sampled_from(
    ["6,7", "5-7", "7-5", "all", "0", "8", "1,1", "-1", "1.5", "nan", "inf", "2", "32", "0.25", "1e9"]))


@SLOW
@given(st.sampled_from([*BACKBONES, "nope", "x.json", ""]),
       st.dictionaries(st.sampled_from(["--condconv", "--experts", "--routing", "--width",
                                        "--resolution", "--convention"]), option_values, max_size=4),
       st.booleans())
def test_madds_arguments_work_or_give_one_line(capsys, model, options, calibrated):
    CASES["madds arguments"] += 1
    argv = ["madds", model, *[x for kv in options.items() for x in kv]]
    if calibrated:
        argv.append("--calibrated-routing")
    _assert_one_line_or_works(*_exit_code(argv, capsys))


@SLOW
@given(budget_texts, st.sampled_from(["--trials", "--workers", "--epochs", "--backend", "--device",
                                      "--cpus-per-trial", "--seed"]), option_values)
def test_a_bad_run_leaves_no_run_folder(capsys, tmp_path, budget, option, value):
    CASES["run arguments"] += 1
    try:
        ok = parse_madds(budget) >= 400_000_000
    except UserError:
        ok = False
    assume(not ok)  # a valid budget would start a search: only the refusals are checked here
    out = tmp_path / "run"
    shutil.rmtree(out, ignore_errors=True)
    code, err = _exit_code(["run", "--budget", budget, option, value, "--out", str(out)], capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().split("\n")) == 1, err
    assert not out.exists(), "nothing half-written"


@SLOW
@given(st.sampled_from(["results", "dashboard", "export"]), option_values,
       st.sampled_from(["--trial", "--budget", "--study", "--format", "--name"]), option_values)
def test_reading_commands_refuse_a_missing_run_in_one_line(capsys, tmp_path, command, run, option, value):
    CASES["results/dashboard/export arguments"] += 1
    out = tmp_path / "written"
    shutil.rmtree(out, ignore_errors=True)
    missing = str(tmp_path / "no-such-run" / run)
    code, err = _exit_code([command, missing, option, value, "-o", str(out)], capsys)
    assert code == 2 and "Traceback" not in err and len(err.strip().split("\n")) == 1, err
    assert not out.exists()
