"""The promotion rule on its own: when a new registered version replaces the champion."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vectorai.errors import RegistryError
from vectorai.registry import ModelVersionRef, decide, parse_model_uri


def test_the_first_version_becomes_champion():
    decision = decide(0.5, None, parity_passed=True)
    assert decision.promote and decision.outcome == "promoted" and "no champion" in decision.reason


def test_a_better_or_equal_version_replaces_the_champion():
    assert decide(0.97, 0.95, parity_passed=True).promote
    assert decide(0.95, 0.95, parity_passed=True).promote  # min_improvement 0: at least as good


def test_a_worse_version_is_refused_with_both_figures():
    decision = decide(0.90, 0.95, parity_passed=True)
    assert not decision.promote and decision.outcome == "refused"
    assert "0.9000" in decision.reason and "0.9500" in decision.reason


@pytest.mark.parametrize("candidate, promote", [(0.96, False), (0.97, True), (0.98, True)])
def test_min_improvement_is_added_to_the_champion(candidate, promote):
    # 0.95 + 0.02 is 0.9700000000000001 in floats: exactly the threshold still promotes.
    assert decide(candidate, 0.95, parity_passed=True, min_improvement=0.02).promote is promote


def test_failed_parity_is_refused_even_when_better_or_first():
    assert decide(0.99, 0.5, parity_passed=False).outcome == "refused"
    assert not decide(0.99, None, parity_passed=False).promote


def test_the_champion_itself_is_kept_not_promoted_again():
    decision = decide(0.9, 0.9, parity_passed=True, candidate_is_champion=True)
    assert not decision.promote and decision.outcome == "kept"


@pytest.mark.parametrize("uri, parsed", [
    ("models:/vectorai-mnist-sample@champion", ("vectorai-mnist-sample", "champion", None)),
    ("models:/vectorai-mnist-sample/12", ("vectorai-mnist-sample", None, "12")),
])
def test_model_uris(uri, parsed):
    assert parse_model_uri(uri) == parsed


@pytest.mark.parametrize("uri", ["runs:/abc/model", "models:/name", "models:/name/latest", "models:/../x@champion",
                                 "models:/a/b/1", "/tmp/model.onnx", "models:/name@"])
def test_other_uris_are_one_line_errors(uri):
    with pytest.raises(RegistryError) as err:
        parse_model_uri(uri)
    assert "\n" not in str(err.value) and uri in str(err.value)


def test_rows_name_the_registered_version():
    assert ModelVersionRef("vectorai-digits", "3", "run", "models:/m-1").label == "vectorai-digits/3"


@pytest.mark.parametrize("version", ["../../etc", "1/../2", "0", "", "01", "1e3", "\u0663", " 1", "1\n"])
def test_a_version_from_the_registry_must_be_a_number_before_it_names_a_cache_folder(tmp_path, version):
    from vectorai.registry import fetch_model

    ref = ModelVersionRef("vectorai-digits", version, "run", "models:/m-1", sha256="0" * 64)
    with pytest.raises(RegistryError) as err:
        fetch_model(ref, f"sqlite:///{tmp_path / 'no-store.db'}", tmp_path / "cache")
    assert "not a version number (digits only)" in str(err.value) and "\n" not in str(err.value)
    assert not (tmp_path / "cache").exists()


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=30))
def test_any_version_the_registry_answers_is_refused_or_stays_inside_the_cache(version):
    from pathlib import Path

    from vectorai.registry import check_version

    try:
        checked = check_version(version, "models:/m")
    except RegistryError:
        return
    cache = Path("/cache/m")
    assert checked == version and version.isascii() and version.isdigit()
    assert (cache / checked).parent == cache and ".." not in checked
