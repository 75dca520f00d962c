"""The effect bar every method's effect test holds on the mini world, and the one check that applies it.

A method's effect test probes the unedited and the edited model on ``tests/seeds.py`` EFFECT_SEED (conftest's
``effect_probe``) and asserts, through :func:`assert_erases`,
``after.erasure_rate >= before.erasure_rate + gain`` and
``after.other_object_accuracy >= before.other_object_accuracy - OTHER_MARGIN``, with the precondition
``before.erasure_rate <= 1 - gain`` (room to show the gain; :func:`assert_room`, checked before the method runs so a
failed precondition costs no training). ``gain`` is ERASURE_GAIN for fine-tuning and inference-time methods and
CLOSED_FORM_GAIN for the closed-form ones (a weight solve reaches further on the mini world).

Also what the method test files share besides: :func:`registered` (a method's class and docstring) and
:func:`edit_as_run_does` (the unit and request ``erasebench run`` builds for a method on the mini model).
"""

from __future__ import annotations

from methods.base import ErasureRequest

# The object the effect tests erase, the mini world's objects (datasets/worlds/v1/world.yaml) and the request that
# erases it with the other objects as the preserve set
TARGET = "circle"
OBJECTS = ["circle", "square", "triangle", "star", "cross", "heart", "diamond", "crescent"]
REQUEST = ErasureRequest(targets=[TARGET], preserve=[o for o in OBJECTS if o != TARGET])

ERASURE_GAIN = 0.15  # the target's erasure rate must rise by at least this much over the unedited model's
CLOSED_FORM_GAIN = 0.2  # the same bar for the closed-form methods (tests/test_methods_closed_form.py, speed)
OTHER_MARGIN = 0.25  # other-object accuracy may fall by at most this much below the unedited model's


def assert_room(before: dict, gain: float = ERASURE_GAIN, rate: str = "erasure_rate", what: str = "the target") -> None:
    """The precondition: the unedited model draws ``what`` often enough to show a gain of ``gain`` in ``rate``."""
    assert before[rate] <= 1 - gain, f"precondition: the unedited model hardly draws {what} ({before})"


def assert_erases(label: str, before: dict, after: dict, gain: float = ERASURE_GAIN, margin: float = OTHER_MARGIN,
                  rate: str = "erasure_rate", keep: tuple[str, ...] = ("other_object_accuracy",),
                  note: str = "") -> dict:
    """The effect test's verdict: ``rate`` rose by ``gain`` at least and each ``keep`` figure fell by ``margin`` at
    most, from the unedited figures ``before`` to the edited ones ``after`` (both from ``effect_probe``). Prints
    and returns the report ``{figure: (before, after)}``; ``label`` (and ``note``) head the printed line."""
    report = {k: (round(before[k], 3), round(after[k], 3)) for k in (rate, *keep)}
    print(f"\n{label}: {report}{' ' + note if note else ''}")
    assert_room(before, gain, rate)
    assert after[rate] >= before[rate] + gain, report
    for key in keep:
        assert after[key] >= before[key] - margin, (key, report)
    return report


# --------------------------------------------------------------------------- shared by the tests/test_method_*.py files
def registered(name: str) -> tuple[type, str]:
    """(the class registered as method ``name``, its module's docstring on one line): what a method file's
    "registered with the official defaults" test reads."""
    import sys

    from methods import METHODS

    cls = METHODS.get(name)
    return cls, " ".join(sys.modules[cls.__module__].__doc__.split())


def edit_as_run_does(name: str, backbone, target: str = "circle", params: dict | None = None):
    """(the method unit, its request) that ``erasebench run --methods NAME --targets TARGET`` builds on the mini
    model (``bench.edits.build_request``: the method's mini defaults and recipe), with ``params`` as the run's
    method params."""
    from bench.config import MethodSpec, RunConfig
    from bench.edits import build_request
    from methods import get_method

    spec = MethodSpec(name=name, params=params or {})
    config = RunConfig(model="mini", targets=[target], methods=[spec])
    return build_request(config, spec, get_method(name, spec.params), target, backbone)
