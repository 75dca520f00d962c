"""The effect table's comparison of two precisions (benchmarks/mini_v2_effects.py ``--against``), on rows by hand."""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def effects(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import mini_v2_effects

    return mini_v2_effects


def cell(method: str, target: str, gain: float, far: float, general: float, bar: bool) -> dict:
    return {"method": method, "target": target, "gain": {"value": gain}, "drop_far": {"value": far},
            "drop_general": {"value": general}, "bar": bar}


def test_flips_lists_the_cells_whose_bar_differs_and_a_later_table_replaces_an_earlier_ones_row(monkeypatch, tmp_path):
    first, rerun = tmp_path / "first.json", tmp_path / "rerun.json"
    first.write_text(json.dumps({"rows": [cell("uce", "heart", 0.9, 0.0, 0.0, True),
                                          cell("sdd", "heart", 0.2, 0.0, 0.0, False),
                                          cell("ca", "blight", 0.5, 0.0, 0.0, True)]}))
    rerun.write_text(json.dumps({"rows": [cell("sdd", "heart", 0.6, 0.0, 0.05, True)]}))  # SDD's new values
    now = [cell("uce", "heart", 0.9, 0.2, 0.0, False),  # damages now: a flip
           cell("sdd", "heart", 0.55, 0.0, 0.0, True),  # passes as the rerun did: no flip (the first table missed)
           cell("ca", "blight", 0.45, 0.0, 0.0, True),  # passes in both
           cell("esd-u", "blight", 0.1, 0.0, 0.0, False)]  # in no earlier table: not a flip
    got = effects(monkeypatch).flips(now, [first, rerun])
    assert got == [{"method": "uce", "target": "heart",
                    "now": {"bar": False, "gain": 0.9, "drop_far": 0.2, "drop_general": 0.0},
                    "against": {"bar": True, "gain": 0.9, "drop_far": 0.0, "drop_general": 0.0}}]


def test_a_renamed_row_of_an_earlier_table_stands_for_the_method_it_became(monkeypatch, tmp_path):
    rerun = tmp_path / "trce.json"  # the rerun's old default, and the variant that has since become the default
    rerun.write_text(json.dumps({"rows": [cell("trce-paper-preserve", "heart", 0.65, 0.0, 0.0, True),
                                          cell("trce", "heart", 0.0, 0.0, 0.0, False)]}))
    flips = effects(monkeypatch).flips
    now = [cell("trce", "heart", 0.69, 0.0, 0.0, True)]
    assert flips(now, [rerun], {"trce-paper-preserve": "trce"}) == []
    assert [f["against"]["gain"] for f in flips(now, [rerun])] == [0.0]  # without the rename: the old default's row


def test_a_rename_without_its_method_is_refused_before_anything_is_read(monkeypatch, tmp_path, capsys):
    with pytest.raises(SystemExit) as exit_:
        effects(monkeypatch).main(["--runs", str(tmp_path / "absent"), "--rename", "trce-paper-preserve"])
    assert exit_.value.code == 2
    assert "--rename takes LABEL=METHOD, got trce-paper-preserve" in capsys.readouterr().err


def test_a_rename_without_against_is_refused(monkeypatch, tmp_path, capsys):
    with pytest.raises(SystemExit):
        effects(monkeypatch).main(["--runs", str(tmp_path / "absent"), "--rename", "trce-paper-preserve=trce"])
    assert "give --against too" in capsys.readouterr().err


def test_the_table_applies_the_effect_tests_bar(monkeypatch):
    """benchmarks/mini_v2_effects.py writes the bar again (a benchmark does not import a test module); they must agree."""
    from tests import test_effects_v2

    table = effects(monkeypatch)
    assert (table.GAIN, table.DROP) == (test_effects_v2.GAIN, test_effects_v2.DROP)
