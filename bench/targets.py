"""A run's target: one concept, or several concepts erased together as one unit, written ``A+B+C``.

MACE (Lu et al., CVPR 2024) erases many concepts with one edit and scores efficacy on the erased ones and
specificity on the rest; a target ``pimbo+kessa rull+drovik+tulameen`` is such a unit. Its concepts go to the
method as one request (``ErasureRequest.targets``), and the unit is one row of the run: its edit, records and
leaderboard row are keyed by the whole written set. Concept names hold spaces but never ``+``, so the
separator cannot clash with a name. A target without ``+`` is one concept and is left exactly as written.
"""

from __future__ import annotations

UNIT_SEP = "+"


def unit_concepts(target: str) -> list[str]:
    """The concepts of a target, in the order written: ``["circle"]`` for ``circle``, ``["a", "b"]`` for ``a+b``."""
    if UNIT_SEP not in target:
        return [target]
    return [part.strip() for part in target.split(UNIT_SEP)]


def is_unit(target: str) -> bool:
    """Whether ``target`` names several concepts erased together."""
    return len(unit_concepts(target)) > 1


def unit_key(concepts: list[str]) -> str:
    """The target that names ``concepts`` (the inverse of :func:`unit_concepts` for a checked target)."""
    return UNIT_SEP.join(concepts)


def parse_target(text: str) -> str:
    """``text`` checked as a target, in its canonical form: one concept unchanged; a unit with the spaces around
    each ``+`` dropped (``a + b`` -> ``a+b``). ValueError (one line) for an empty concept or a repeated one."""
    if UNIT_SEP not in text:
        return text
    concepts = unit_concepts(text)
    if any(not c for c in concepts):
        raise ValueError(f"target {text!r} has an empty concept around a '+'; write concepts erased together as "
                         "A+B+C")
    repeated = sorted({c for c in concepts if concepts.count(c) > 1})
    if repeated:
        raise ValueError(f"target {text!r} names {', '.join(map(repr, repeated))} twice; name each concept of a unit "
                         "once")
    return unit_key(concepts)
