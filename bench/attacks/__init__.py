"""Robustness attacks: try to bring an erased concept back (see :mod:`bench.attacks.base`).

Registered attacks (``erasebench list attacks``): ``unlearndiffatk``, ``ring-a-bell``,
``concept-inversion``, ``p4d`` (P4D-N / P4D-K), ``pez`` (hard prompts made easy), ``mma-diffusion``
(its text attack), ``tina`` (text-free inversion into a starting latent;
M-ErasureBench's latent scenarios as presets) and the floor ``random-tokens``. More come from the entry-point group
``erasebench.attacks``. Static adversarial prompt sets are prompt sources in
:mod:`bench.attacks.static_sets`; the runner integration is :func:`bench.attacks.run.run_attacks`.
"""

from bench.attacks import (  # noqa: F401
                           concept_inversion,
                           mma_diffusion,
                           p4d,
                           pez,
                           random_tokens,
                           ring_a_bell,
                           static_sets,
                           tina,
                           unlearndiffatk,
)
from bench.attacks.base import (
                                ATTACKS,
                                Attack,
                                AttackCache,
                                AttackConfig,
                                Found,
                                UNetCounter,
                                backbone_with_tokens,
                                decode_latents,
                                encode_latents,
                                read_csv,
                                register_attack,
)

__all__ = ["ATTACKS", "Attack", "AttackCache", "AttackConfig", "Found", "UNetCounter", "backbone_with_tokens",
           "decode_latents", "encode_latents", "read_csv", "register_attack"]
