"""The rule that picks world v2's own learning rates (benchmarks/mini_v2_rates.py), on rows written out by hand."""

from __future__ import annotations

from pathlib import Path


def rates(monkeypatch):
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "benchmarks"))
    import mini_v2_rates

    return mini_v2_rates


def row(setting: str, lr: float, target: str, bar: bool, wrecks: bool = False) -> dict:
    return {"setting": setting, "lr": lr, "target": target, "bar": bar, "wrecks": wrecks}


def test_the_rate_with_most_targets_meeting_the_bar_wins(monkeypatch):
    rows = [row("lr=1", 1.0, "a", True), row("lr=1", 1.0, "b", False),
            row("lr=2", 2.0, "a", True), row("lr=2", 2.0, "b", True)]
    got = rates(monkeypatch).pick(rows)
    assert got["pick"] == "lr=2"
    assert got["by_setting"] == {"lr=1": {"passes": 1, "wrecks": 0, "targets": 2},
                                 "lr=2": {"passes": 2, "wrecks": 0, "targets": 2}}


def test_a_tie_goes_to_a_rate_that_wrecks_nothing_then_to_the_larger(monkeypatch):
    pick = rates(monkeypatch).pick
    # FMN's case: no rate meets the bar; the larger one wrecks a target, so the smaller is taken
    assert pick([row("lr=1", 1.0, "a", False), row("lr=3", 3.0, "a", False, wrecks=True)])["pick"] == "lr=1"
    # SDD's case: two rates tie and neither wrecks: the larger
    assert pick([row("lr=1", 1.0, "a", True), row("lr=2", 2.0, "b", True)])["pick"] == "lr=2"
