"""The effect bar every method's effect test holds on the mini world (one place, so the bars cannot drift apart).

A method's effect test probes the unedited and the edited model on ``tests/seeds.py`` EFFECT_SEED and asserts
``after.erasure_rate >= before.erasure_rate + ERASURE_GAIN`` and
``after.other_object_accuracy >= before.other_object_accuracy - OTHER_MARGIN`` (with the precondition
``before.erasure_rate <= 1 - ERASURE_GAIN``: room to show the gain). Files that still define their own copies (owned
by other work when this module was written): test_method_ant, test_method_hirm, test_method_itd, test_method_spm,
test_method_trce.
"""

from __future__ import annotations

ERASURE_GAIN = 0.15  # the target's erasure rate must rise by at least this much over the unedited model's
OTHER_MARGIN = 0.25  # other-object accuracy may fall by at most this much below the unedited model's
