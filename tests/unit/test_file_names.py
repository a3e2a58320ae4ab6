"""The checks on settings that become part of file names (tasks/common.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from tasks.common import check_name_part, inside, name_part
from vectorai.errors import ConfigError

BAD = ["", ".", "..", ".hidden", "a/b", "a\\b", "../../etc/x", "x/../../y", "a..b", "a b", "x" * 101, "é", "a\x00b"]
GOOD = ["adhoc", "2024-05-01T10", "2024-05-01T10:00+02:00", "vectorai-images", "topic.v2_x", "x" * 100]


@pytest.mark.parametrize("value", BAD)
def test_bad_names_are_refused_in_one_line_and_replaced_in_outputs(value):
    with pytest.raises(ConfigError) as err:
        check_name_part("PredictTask.run_at", value)
    assert str(err.value).startswith(f"setting PredictTask.run_at: {value!r} cannot be part of a file name")
    assert "\n" not in str(err.value)
    stand_in = name_part(value)
    assert stand_in.startswith("invalid-") and check_name_part("x", stand_in) == stand_in
    assert name_part(value + "z") != stand_in  # distinct values keep distinct stand-ins


@pytest.mark.parametrize("value", GOOD)
def test_good_names_are_kept(value):
    assert check_name_part("PredictTask.run_at", value) == value
    assert name_part(value) == value


def test_inside_refuses_paths_that_climb_out(tmp_path):
    data = tmp_path / "data"
    assert inside(data, data / "reports" / "r.json", "s") == data / "reports" / "r.json"
    with pytest.raises(ConfigError, match="outside the data folder"):
        inside(data, data / "reports" / ".." / ".." / "r.json", "s")
    with pytest.raises(ConfigError, match="outside the data folder"):
        inside(Path("data"), Path("data-other/r.json"), "s")
