"""Concept-editing methods, one module each, registered by name.

``METHODS`` finds a method by name and imports only its module (:class:`bench.registry.Registry`): ``CATALOG``
below names each built-in method's module and one-line description, so ``erasebench list methods`` and a run of
one method never import the others. A method module imports torch and the harness's model code inside the
functions that use them (``methods/_grad.py``'s ``no_grad`` for a decorator; annotations under ``TYPE_CHECKING``), so
``erasebench show`` reads its config, recipes and deviations without loading them (tests/test_cli_startup.py). A
new method module registers its class with ``@register_method`` and adds one ``CATALOG`` line
(``tests/test_registry.py`` checks that the lines match the classes); a module without a line is still found, by
importing every undeclared module of this package when a name is not in the catalog.

``METHODS`` also reads the entry-point group ``erasebench.methods``, so a separate package can
add a method without touching this repository::

    [project.entry-points."erasebench.methods"]
    my-variant = "my_pkg.my_variant:MyVariant"
"""

from __future__ import annotations

from methods.base import METHODS, ErasureRequest, Method, MethodConfig, get_method, register_method

# name -> (module, description): the class's `description`, word for word
CATALOG: dict[str, tuple[str, str]] = {
    "ace": ("methods.ace",
        "ACE: anti-editing erasure, a LoRA trained so the concept is erased in the conditional and injected "
        "into the unconditional prediction, with prior preservation (Wang et al., CVPR 2025)"),
    "advunlearn": ("methods.advunlearn",
        "AdvUnlearn: adversarial ESD training of the text encoder with a retain regulariser (Zhang et al. 2024)"),
    "ant": ("methods.ant",
        "ANT: mid-to-late CFG reversal with early-stage preservation, saliency-masked (Li et al. 2025)"),
    "ca": ("methods.ca",
        "Concept Ablation: map the target's distribution onto the anchor's (Kumari et al. 2023)"),
    "cad-amplify": ("methods.cad",
        "CAD-Amplify: zero the FF weights with the most negative attribution under -denoising loss"),
    "cad-erase": ("methods.cad",
        "CAD-Erase: zero the FF weights with the largest positive attribution w*dJ/dw (arXiv 2412.02542)"),
    "cad-random": ("methods.cad_random",
        "CAD-Erase's control: as many weights zeroed as CAD-Erase, in the same matrices, at random"),
    "conceptprune": ("methods.conceptprune",
        "ConceptPrune: Wanda-scored skilled FF neurons pruned (Chavhan et al. 2025)"),
    "erasediff": ("methods.erasediff",
        'EraseDiff: bi-level unlearning, remaining loss under a forgetting constraint (Wu et al. 2024)'),
    "esd-u": ("methods.esd",
        "ESD-u: negative-guidance fine-tuning of the non-cross-attention UNet weights (Gandikota et al. 2023)"),
    "esd-x": ("methods.esd",
        "ESD-x: negative-guidance fine-tuning of the cross-attention (Gandikota et al. 2023)"),
    "fmn": ("methods.fmn",
        "Forget-Me-Not: re-steer the cross-attention away from the concept's tokens (Zhang et al. 2023)"),
    "hirm": ("methods.hirm",
        "HiRM: trains the first text-encoder layer so the last layer's representation of the concept is "
        "misdirected (Lee et al., ICLR 2026)"),
    "itd": ("methods.itd",
        "Interpret-then-Deactivate: a sparse autoencoder on the text encoder finds and deactivates the concept's "
        "features in prompts it flags (arXiv 2503.09446, 2025)"),
    "mace-cfr": ("methods.mace_cfr",
        "MACE stage 1: closed-form refinement of cross-attention k/v for many concepts (Lu et al. 2024)"),
    "negative-prompt": ("methods.negative_prompt",
        "the target as the negative prompt of classifier-free guidance"),
    "none": ("methods.none",
        "the unedited model (reference row)"),
    "rece": ("methods.rece",
        "RECE: UCE plus closed-form derivation and erasure of regenerating embeddings (Gong et al. 2024)"),
    "receler": ("methods.receler",
        "Receler: light erasers after cross-attention, trained as ESD with concept-localised "
        "regularisation (Huang et al. 2024)"),
    "sa": ("methods.sa",
        "Selective Amnesia: the concept taught a surrogate, with EWC (Fisher of generated samples) and "
        "generative replay (Heng & Soh 2023)"),
    "safree": ("methods.safree",
        "SAFREE: project the prompt's tokens near the toxic subspace away from it, for the first denoising "
        "steps (Yoon et al. 2025)"),
    "salun": ("methods.salun",
        "SalUn: gradient-saliency-masked random-label unlearning (Fan et al. 2024)"),
    "scissorhands": ("methods.scissorhands",
        "Scissorhands: SNIP-prune the weights most sensitive to the concept, then repair (Wu & Harandi 2024)"),
    "sdd": ("methods.sdd",
        "SDD: self-distil the concept's noise estimate onto the unconditional one, EMA teacher (Kim et al. 2023)"),
    "sld": ("methods.sld",
        "Safe Latent Diffusion: safety guidance away from the target at sampling (Schramowski et al. 2023)"),
    "speed": ("methods.speed",
        "SPEED: closed-form cross-attention edit in the retain set's null space (Li et al. 2025)"),
    "spm": ("methods.spm",
        "SPM: a rank-1 adapter per concept, latent anchoring and facilitated transport (Lyu et al. 2024)"),
    "stereo": ("methods.stereo",
        "STEREO: erase-attack rounds find adversarial tokens, then one anchor-based compositional erasure "
        "of the concept and the tokens (Srivatsan et al., CVPR 2025)"),
    "trce": ("methods.trce",
        "TRCE: closed-form edit of the first [EoT] in cross-attention K/V, then an early-step contrastive "
        "fine-tune (Chen et al., ICCV 2025)"),
    "uce": ("methods.uce",
        "Unified Concept Editing: closed-form edit of cross-attention k/v (Gandikota et al. 2024)"),
}
for _name, (_module, _description) in CATALOG.items():
    METHODS.declare(_name, _module, _description)
METHODS.declare_package(__name__, skip=("base", "recipes"))

__all__ = ["CATALOG", "METHODS", "ErasureRequest", "Method", "MethodConfig", "get_method", "register_method"]
