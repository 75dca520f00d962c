"""Every registered method states its remaining deviations from the official code (docs/DEVELOPING.md, "Deviations").

- Each method has a non-empty ``deviations`` list, or says that it has none and what it was checked against.
- Each entry names what differs, the official source and a class (a, b or c); ``kinds`` restrict it to concept kinds.
- ``erasebench show method NAME --kind KIND --model sd --json`` lists those of the kind; the text table too.
- The list is not part of a method's fingerprint: editing it never changes an edit key.
"""

from __future__ import annotations

import json

import pytest

from bench.show_cli import format_table, show_method
from methods import METHODS
from methods.base import CONCEPT_KINDS, Deviation
from tests.cli import erasebench_process


@pytest.mark.parametrize("name", sorted(METHODS.names()))
def test_every_method_lists_its_deviations_or_says_it_has_none(name):
    cls = METHODS.get(name)
    entries = [Deviation.of(d) for d in cls.deviations]  # raises for a malformed entry
    if not entries:
        assert cls.deviations_checked.strip(), f"{name}: no deviations and no statement of what it was checked against"
    for d in entries:
        assert d.cls in ("a", "b", "c") and d.what.strip() and d.official.strip(), (name, d)
        assert set(d.kinds) <= set(CONCEPT_KINDS), (name, d)
    for kind in ("nudity", "object", "style", "identity"):
        shown = show_method(name, kind, "sd")
        assert shown["deviations"] == cls.deviations_for(kind), (name, kind)
        assert shown["deviations"] or shown["deviations_checked"], (name, kind)


def test_kinds_select_the_deviations_shown():
    trce = {k: [d["what"] for d in show_method("trce", k, "sd")["deviations"]] for k in ("nudity", "object", "style")}
    assert any("stage 2 runs with the sexual values" in w for w in trce["object"])
    assert not any("stage 2 runs with the sexual values" in w for w in trce["nudity"])
    assert any("Nudity' is dropped" in w for w in trce["nudity"]) and not any("Nudity' is dropped" in w
                                                                               for w in trce["style"])
    table = format_table(show_method("trce", "style", "sd"))
    assert "deviations from the official code" in table and "- [b]" in table
    assert "deviations: none (checked against" in format_table(show_method("none", "object", "sd"))


def test_the_cli_prints_them_as_json():
    done = erasebench_process("show", "method", "ant", "--kind", "style", "--model", "sd", "--json")
    assert done.returncode == 0, done.stderr
    out = done.stdout
    shown = json.loads(out)
    assert shown["deviations"] and all({"what", "official", "class"} <= set(d) for d in shown["deviations"])
    assert any("Multiple/" in d["official"] for d in shown["deviations"])


def test_the_list_is_not_part_of_the_fingerprint(monkeypatch):
    for name in ("ant", "trce", "uce", "itd"):
        cls = METHODS.get(name)
        before = cls().fingerprint()
        monkeypatch.setattr(cls, "deviations", ())
        assert cls().fingerprint() == before, name
