"""TRCE (Chen et al., "TRCE: Towards Reliable Malicious Concept Erasure in Text-to-Image Diffusion Models",
ICCV 2025, arXiv:2503.07389): a closed-form cross-attention edit, then a short contrastive fine-tune of the
early denoising steps.

**Stage 1, closed-form edit of the cross-attention K/V (paper Sec. 3.2).** Each malicious prompt ``p_i`` (a
concept word in an augmentation template, "A photo of {}") is paired with the same template around the safe
concept ``s_i`` (the request's anchor, "a person wearing clothes" for nudity). The paper's choice of token is
the **first [EoT]** of each prompt: through the causal text encoder it summarises the whole prompt, and the
UNet attends to it in every image. The official configs weight the rows [SoT], first [EoT], last [EoT] and the
keyword tokens by ``token_weight_scale = [0, 1, 0, 0]``: only the first [EoT] is edited. With ``c_i`` that row of
``p_i``, ``c_i*`` the same row of ``s_i`` and preserve rows ``c_j`` (every row of general captions, COCO in the
paper), every ``attn2.to_k`` / ``attn2.to_v`` weight ``W`` becomes

    W_new = argmin_W  (1/N) sum_i ||W c_i - W_old c_i*||^2 + preserve_scale sum_j ||W c_j - W_old c_j||^2
                      + lamb ||W - W_old||^2
          = (lamb W_old + (1/N) sum_i W_old c_i* c_i^T + preserve_scale sum_j W_old c_j c_j^T)
            (lamb I     + (1/N) sum_i c_i c_i^T      + preserve_scale sum_j c_j c_j^T)^-1

which is UCE's Eq. 7 with ``erase_scale = 1/N`` (the official code averages over the pairs): it is solved by
:func:`methods.uce.edit_projections`, the project's closed-form code.

**Stage 2, early-step contrastive fine-tune (paper Sec. 3.3, Eq. 8-10).** With the original model ``theta*``,
the stage-1 model ``theta_1``, the model being trained ``theta`` (self-attention ``attn1`` and cross-attention
``attn2.to_q`` only), guidance ``w``, a latent ``x_t`` of a DDIM trajectory of the malicious prompt ``c`` at an
early step, the safe prompt ``c_s``:

    prefer = eps*(x_t, c_s) + w [eps*(x_t, c_s) - eps*(x_t, "")]      (the CFG-augmented safe direction)
    reject = eps*(x_t, c)   + w [eps*(x_t, c)   - eps*(x_t, "")]      (the CFG-augmented malicious direction)
    l(e)   = max(0, beta (||e - prefer||^2 - ||e - reject||^2 + margin))
    L_target   = 1/2 [ l(eps_theta(x_t, c)) + l(eps_theta(x_t, "")) ]
    L_preserve = || eps_theta(x_r, "") - sg(eps_theta_1(x_r, "")) ||^2   (x_r: unconditional trajectories, any step)
    L = L_target + preserve_scale * L_preserve

so the conditional and the unconditional predictions of the early steps prefer the safe direction over the
malicious one by a margin, while the unconditional prediction elsewhere stays that of the stage-1 model.

Defaults (ddgoodgood/TRCE @ b69ef60, ``config/stage1/stage1_sexual_default.yaml``,
``config/stage2/stage2_sexual_default.yaml``, ``run_trce_stage1.py``, ``run_trce_stage2.py``,
``stage2_data_preparation.py``; each next to its field). Deliberate deviations, also in the edit's stats:

- the first [EoT] row is found by its token (the official code counts words, ``len(sentence.split()) + 1``,
  which points at another row when a word is several tokens or a prompt has punctuation);
- (no longer a deviation since algorithm version 2) the official stage-2 loop never calls
  ``optimizer.zero_grad()`` (``run_trce_stage2.py`` lines 190-191): the gradients of all steps add up, and
  AdamW steps on that running sum. ``official_accumulate=True`` (default) does the same (the running sum is
  kept through a resume); ``False`` starts every step from zero gradients, as the paper's loss reads;
- a latent is scored at its own DDIM timestep. The official stores the latent *after* step s with that step's
  t, so its target term scores exactly one DDIM step above the latent's level, and only its preserve term draws
  t in a 20-wide window ``[(49 - s) 20, (50 - s) 20)``;
- the unconditional (preserve) latents are those before each DDIM step 0..49, drawn at random; the official
  reads its after-step latents 0..49 (x_0 included, the pure noise not) in file order;
- the malicious-concept synonym lists the authors wrote with GPT-4o are the request's ``target_prompts`` (the
  nudity recipe lists the first 20 of ``data/concepts/sexual.json``); on the mini world the concept is the target
  word, in the world's own caption contexts (the model knows no other phrasing);
- COCO preservation uses the 30k captions of ``coco_30k.csv`` with the weight scaled to the official cache's
  617k captions (as ``methods/mace_cfr.py``; the TRCE README ships MACE's ``cache_coco.pt``).
- Without preserve prompts the empty prompt's rows are preserved. With ``lamb = 0`` the solve needs preserve
  rows that span the embedding space; a rank-deficient normal matrix (the empty prompt's 77 rows and the
  concept rows, far below 768 dimensions) is refused with an error before any weight changes
  (:func:`check_solvable`), instead of returning weights blown up in the null directions.

**Each kind** (algorithm version 2). The official stage 1 (``run_trce_stage1.py``) always preserves MACE's COCO
cache (``prior_cache_path: data/cache/cache_coco.pt`` in both published stage-1 configs) with ``lamb = 0``, and
always augments with the *object* templates (``prompt_augmentation``'s default ``concept_type='object'``). So
every kind's recipe here preserves the COCO captions (``coco_30k.csv``, weight scaled as for nudity) and
stage 1 uses the object templates for every kind. Style: the repository's concept files ``van-gogh.json``
and ``kelly.json`` (20 entries each, every one mapped to "art") are the concepts of a Van Gogh or Kelly
McKernan target (``official_concept_lists``), the recipe's anchor is "art"; another artist is erased by its
name, mapped to "art". Object and identity: the official code has no concept file or config for them (the
paper evaluates nudity, unsafe content and two artists); the target word is the only concept, mapped to the
request's anchor. Stage 2: only ``stage2_sexual_default.yaml`` and ``stage2_unsafe_default.yaml`` are
published (identical values) and ``stage2_data_preparation.py`` prepares only sexual and unsafe
trajectories, so every other kind runs stage 2 with the sexual values (lr 1e-6, 3 epochs, guidance 15,
preserve 100, beta 1, margin 0.01, early steps 0..25), trajectories of "a photo of {}" and the safe direction
of the kind's anchor ("art" for style); the recipes' notes say so.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from methods import _finetune as ft
from methods._grad import no_grad
from methods.base import Deviation, ErasureRequest, register_method, v1_world
from methods.recipes import PromptFile, Recipe
from methods.uce import edit_projections, gram_rows

if TYPE_CHECKING:
    import torch

    from bench.backbone import Backbone

# The first 15 of the official object augmentation (src/cfr_utils.py, prompt_augmentation(concept_type='object'),
# augment_num 15): the templates stage 1 puts every concept and its safe counterpart in.
OBJECT_TEMPLATES = [
    "{} in a photo", "A snapshot of {}", "A photograph showcasing {}", "An illustration of {}",
    "A digital rendering of {}", "A visual representation of {}", "A black and white image of {}",
    "A scene depicting {} during a public gathering", "A depiction created with oil paints capturing {}",
    "An official photograph featuring {}", "A detailed sketch of {}", "{} during sunset/sunrise",
    "Magazine cover capturing {}", "An oil portrait of {}", "{} in a sketch painting",
]

# The official style concept files (data/concepts/van-gogh.json, kelly.json @ b69ef60): 20 phrases each, every one
# mapped to "art". Keyed by the lower-case artist name a target may use.
VAN_GOGH = (
    "Van Gogh", "Vincent van Gogh", "Starry Night, van gogh", "Sunflowers, van gogh", "The Bedroom, van gogh",
    "Irises, van gogh", "Self-portrait with Bandaged Ear, van gogh", "Wheatfield with Crows, van gogh",
    "Caf\u00e9 Terrace at Night, van gogh", "Almond Blossom, van gogh", "The Night Caf\u00e9, van gogh",
    "The Potato Eaters, van gogh", "Vase with Fifteen Sunflowers, van gogh", "Van Gogh Museum",
    "Expressionist style, van gogh", "Post-Impressionist, van gogh", "Dutch painter, van gogh",
    "Gogh-inspired, van gogh", "Gogh-like, van gogh", "Gogh aesthetic, van gogh",
)
KELLY_MCKERNAN = (
    "Kelly McKernan", "McKernan-style", "Inspired by Kelly McKernan", "Artwork by Kelly McKernan",
    "Kelly McKernan aesthetic", "McKernan painting", "McKernan-inspired", "Kelly McKernan illustration",
    "McKernan\u2019s palette", "Kelly McKernan art style", "McKernan's technique", "Kelly McKernan influence",
    "Kelly McKernan visuals", "McKernan-like", "Kelly McKernan artwork", "McKernan-derived",
    "Kelly McKernan inspired design", "Kelly McKernan mimicry", "Replicate Kelly McKernan",
    "McKernan signature style",
)
STYLE_CONCEPTS: dict[str, tuple[str, ...]] = {
    "van gogh": VAN_GOGH, "vincent van gogh": VAN_GOGH, "kelly mckernan": KELLY_MCKERNAN,
}

_REPO = "ddgoodgood/TRCE @ b69ef60"
_S1 = f"{_REPO}, config/stage1/stage1_sexual_default.yaml"
_S2 = f"{_REPO}, config/stage2/stage2_sexual_default.yaml"
_PREP = f"{_REPO}, stage2_data_preparation.py"
_STAGE1 = f"{_REPO}, run_trce_stage1.py"
# The official cache holds every COCO 2014 caption (MACE's cache_coco.pt): 616,767; here the 30k of coco_30k.csv.
_COCO_FACTOR = 616_767 / 30_000
# run_trce_stage1.py multiplies the cache by preserve_scale, closed_form_refinement multiplies by it again and
# divides by 3e4: the weight of one COCO row is preserve_scale ** 2 / 3e4.
OFFICIAL_ROW_WEIGHT = 0.01**2 / 3e4


@dataclass
class TRCEConfig(ft.FinetuneConfig):
    # ---- stage 1: the closed-form edit
    # empty: the first augment_num official object templates, for every kind (src/cfr_utils.py prompt_augmentation,
    # concept_type='object' as run_trce_stage1.py calls it)
    templates: list[str] = field(default_factory=list)
    # a style target with an official concept file (data/concepts/van-gogh.json, kelly.json) erases its 20 entries
    official_concept_lists: bool = True
    augment_num: int = 15  # stage1_sexual_default.yaml (augment.augment_num)
    lamb: float = 0.0  # run_trce_stage1.py (closed_form_refinement(..., lamb=0.0))
    closed_form_preserve_scale: float = OFFICIAL_ROW_WEIGHT  # per preserve row: preserve_scale 0.01, squared, / 3e4
    # ---- stage 2: the early-step fine-tune
    stage2: bool = True  # False: stage 1 only (the paper's "T" ablation row)
    lr: float = 1e-6  # stage2_sexual_default.yaml (learning_rate)
    weight_decay: float = 0.01  # run_trce_stage2.py (AdamW(..., weight_decay=0.01))
    # run_trce_stage2.py:190-191 (backward, step, never zero_grad): gradients add up over all steps; False zeroes them
    official_accumulate: bool = True
    epochs: int = 3  # stage2_sexual_default.yaml (epochs): passes over every malicious trajectory
    guidance: float = 15.0  # stage2_sexual_default.yaml (guidance): w of the CFG-augmented directions
    preserve_scale: float = 100.0  # stage2_sexual_default.yaml (preserve_scale)
    beta: float = 1.0  # stage2_sexual_default.yaml (beta)
    margin: float = 0.01  # stage2_sexual_default.yaml (margin)
    max_early_step: int = 25  # stage2_sexual_default.yaml (max_early_timestep): DDIM steps 0..25 of 50 are "early"
    regularization_batch_size: int = 4  # stage2_sexual_default.yaml
    ddim_steps: int = 50  # stage2_data_preparation.py (num_inference_steps=50)
    trajectory_guidance: float = 3.0  # stage2_data_preparation.py (malicious trajectories: guidance_scale=3)
    trajectory_template: str = "a photo of {}"  # stage2_data_preparation.py (prompt_template for "sexual")
    images_per_prompt: int = 5  # stage2_data_preparation.py (images_per_prompt)
    regularization_trajectories: int = 2000  # stage2_data_preparation.py (uncond_num): unconditional samples


# On the mini world (the shipped model; TUNING_SEED, 12 target / 14 other-object images; benchmarks/trce_hirm_sweep.py,
# results/trce_sweep_mini.json; unedited: erasure 0.00, other objects 1.00): with the paper's preserve weight per row
# (3.3e-9, bare preserve words) stage 1 erased 0.79 but took other objects to 0.14 (2 images per prompt), so the
# preserve rows (the other objects in the world's contexts) weigh 1.0; stage 1 then erases 0.17 / 1.00 mapped to the
# empty prompt ("a red": the model's default object is a circle) and 1.00 / 1.00 mapped to "square"; stages 1 + 2
# with this preset, to "square": 1.00 / 1.00. A 25-step sampler as the world's, the same early half of it, one
# trajectory per context and 4 unconditional ones (the official 5 and 2000 cost minutes here), lr 1e-3 (the tiny UNet
# does not move at 1e-6).
MINI_DEFAULTS: dict[str, Any] = {
    "closed_form_preserve_scale": 1.0,
    "ddim_steps": 25,
    "max_early_step": 12,
    "images_per_prompt": 1,
    "regularization_trajectories": 4,
    "regularization_batch_size": 2,
    "epochs": 1,  # the sweep ran 2 (1.00 / 1.00 to "square", as stage 1 alone); 1 halves the test's cost
    "lr": 1e-3,
}

RECIPES = {
    "nudity": Recipe(
        kind="nudity",
        params={"augment_num": 15, "lamb": 0.0, "closed_form_preserve_scale": OFFICIAL_ROW_WEIGHT * _COCO_FACTOR,
                "lr": 1e-6, "epochs": 3, "guidance": 15.0, "preserve_scale": 100.0, "beta": 1.0, "margin": 0.01,
                "max_early_step": 25, "trajectory_template": "a photo of {}"},
        # data/concepts/sexual.json[:20] (concept_num 20): the GPT-4o synonyms, each mapped to the anchor
        target_prompts=("Nudity", "Pornography", "Erotic", "Masturbation", "Sucking", "Naked", "Sexual Content",
                        "Exposed genitals", "Exposed breast", "Exposed buttocks", "Big Ass", "Making Love",
                        "Sexual Intercourse", "Raunchy Party", "Naked Man", "Fucking", "Unclothed Man", "Naked Woman",
                        "Bare Skin"),
        anchor="a person wearing clothes",
        preserve_file=PromptFile("coco_30k.csv", column="prompt"),
        sources={
            "augment_num": f"{_S1} (augment.augment_num 15)",
            "lamb": f"{_REPO}, run_trce_stage1.py (lamb=0.0)",
            "closed_form_preserve_scale": f"{_S1} (preserve_scale 0.01, applied twice, / 3e4 in src/cfr_utils.py)"
                                          " x 616767/30000 (coco_30k.csv for the full COCO cache)",
            "lr": f"{_S2} (learning_rate 1e-6)", "epochs": f"{_S2} (epochs 3)", "guidance": f"{_S2} (guidance 15)",
            "preserve_scale": f"{_S2} (preserve_scale 100)", "beta": f"{_S2} (beta 1)", "margin": f"{_S2} (margin 0.01)",
            "max_early_step": f"{_S2} (max_early_timestep 25)",
            "trajectory_template": f"{_PREP} (prompt_template 'a photo of {{}}')",
            "target_prompts": f"{_REPO}, data/concepts/sexual.json (first 20 entries, concept_num 20; one repeat dropped)",
            "anchor": f"{_REPO}, data/concepts/sexual.json (every entry's safe concept)",
            "preserve_file": f"{_REPO}, README.md (MACE's COCO cache, data/cache/cache_coco.pt); here coco_30k.csv",
        },
        note="COCO preservation from the 30k captions of coco_30k.csv (weight scaled), not the full-COCO cache",
    ),
}
# Stage 1 of every kind preserves the COCO cache as the nudity run does (run_trce_stage1.py reads prior_cache_path in
# every config); stage 2 has only the sexual/unsafe configs (same values), used for every kind.
_STAGE2_BORROWED = ("stage 2 runs with the sexual values (stage2_sexual_default.yaml: no other kind's stage-2 config or "
                    "trajectory preparation is published), trajectories of 'a photo of {}', safe direction = the anchor")
_SHARED_PARAMS = {k: v for k, v in RECIPES["nudity"].params.items()}
_SHARED_SOURCES = {k: v for k, v in RECIPES["nudity"].sources.items()
                   if k not in ("target_prompts", "anchor")}
_SHARED_SOURCES["preserve_file"] = (f"{_STAGE1} (the COCO prior cache, prior_cache_path in every stage-1 config); "
                                    "here coco_30k.csv")
RECIPES["style"] = Recipe(
    kind="style", params=dict(_SHARED_PARAMS), target_prompts=("{concept}",), anchor="art",
    preserve_file=PromptFile("coco_30k.csv", column="prompt"),
    sources={**_SHARED_SOURCES,
             "target_prompts": f"{_REPO}, data/concepts/van-gogh.json, kelly.json (20 entries each, used for those "
                               "two artists: official_concept_lists); another artist: its name",
             "anchor": f"{_REPO}, data/concepts/van-gogh.json, kelly.json (every entry's safe concept 'art')"},
    note="; ".join(["COCO preservation from coco_30k.csv (weight scaled)", _STAGE2_BORROWED]),
)
for _kind in ("object", "identity"):
    RECIPES[_kind] = Recipe(
        kind=_kind, params=dict(_SHARED_PARAMS), target_prompts=("{concept}",),
        preserve_file=PromptFile("coco_30k.csv", column="prompt"),
        sources={**_SHARED_SOURCES,
                 "target_prompts": f"no official {_kind} concept file in {_REPO} (data/concepts: sexual, unsafe, "
                                   "van-gogh, kelly): the target itself"},
        note="; ".join([f"no official {_kind} run: the nudity recipe's values with the target as its only concept and "
                        "the request's anchor", "COCO preservation from coco_30k.csv (weight scaled)",
                        _STAGE2_BORROWED]),
    )


# --------------------------------------------------------------------------- stage 1
def first_eot_row(backbone: Backbone, prompt: str) -> int:
    """The row of the prompt's first end-of-text token (its last row when truncated)."""
    length = backbone.tokenizer.model_max_length
    ids = backbone.tokenizer(prompt, truncation=True, max_length=length).input_ids
    eos = backbone.tokenizer.eos_token_id
    return ids.index(eos) if eos in ids else len(ids) - 1


def eot_pairs(backbone: Backbone, concepts: list[str], anchor: str, templates: list[str]
              ) -> tuple[torch.Tensor, torch.Tensor, list[tuple[str, str]]]:
    """(first-[EoT] rows of every concept prompt, the same rows of the anchor prompts, the prompt pairs)."""
    import torch

    pairs = [(t.format(c), " ".join(t.format(anchor).split())) for c in concepts for t in templates]
    with torch.no_grad():
        emb_old = backbone.encode([p for p, _ in pairs]).float()
        emb_new = backbone.encode([s for _, s in pairs]).float()
    rows_old = [first_eot_row(backbone, p) for p, _ in pairs]
    rows_new = [first_eot_row(backbone, s) for _, s in pairs]
    c_old = torch.stack([emb_old[i, r] for i, r in enumerate(rows_old)])
    c_new = torch.stack([emb_new[i, r] for i, r in enumerate(rows_new)])
    return c_old, c_new, pairs


def mini_contexts(request: ErasureRequest) -> list[str]:
    """The mini world's caption contexts of the target's kind ("a red {}", ...): the only phrasings it knows."""
    from bench.worlds.v1.prompts import concept_contexts, world

    return concept_contexts(world().kind_of(request.targets[0]))


def mini_preserve(request: ErasureRequest) -> list[str]:
    """World v1's stand-in for the COCO cache when a request preserves nothing (the runner gives mini v1 units no
    preserve set): the other concepts of the target's kind. With the empty prompt alone the stage-1 solve is
    rank-deficient (rank 36 of 128) and TRCE refuses it, which stopped the default run."""
    from bench.worlds.v1.prompts import world

    w = world()
    try:
        pool = {"object": w.objects, "colour": w.colours, "style": w.styles}[w.kind_of(request.targets[0])]
    except (KeyError, ValueError):
        return []
    return [c for c in pool if c not in request.targets]


_ST2 = f"{_REPO}, run_trce_stage2.py"
TRCE_DEVIATIONS = (
    Deviation("the first [EoT] row is found by its token; the official counts words (len(split()) + 1), which "
              "points at another row when a word is several tokens", f"{_REPO}, src/cfr_utils.py:116-117", "a"),
    Deviation("stage-2 latents are scored at their own DDIM timestep; the official target term scores one DDIM step "
              "above the latent's level and its preserve term draws t in [(49-s) 20, (50-s) 20)",
              f"{_ST2}:112-116, 167-172", "a"),
    Deviation("preserve latents: those before DDIM steps 0..49 (noise included, x_0 not) of trajectories drawn at "
              "random; the official reads its after-step latents (x_0 included) of the files in order",
              f"{_ST2}:153-172", "a"),
    Deviation("COCO preservation from the 30k captions of coco_30k.csv, weight scaled by 616767/30000; the official "
              "uses MACE's cache of every COCO-2014 caption (cache_coco.pt)", f"{_REPO}, README.md; {_STAGE1}", "a"),
    Deviation("the concept list's repeated 'Nudity' is dropped: 19 concepts (285 pairs, 95 trajectories an epoch) "
              "against the official 20", f"{_REPO}, data/concepts/sexual.json", "a", ("nudity",)),
    Deviation("stage 2 runs with the sexual values (guidance 15, 3 epochs, preserve 100, early steps 0..25) and "
              "'a photo of {}' trajectories, the safe direction being the kind's anchor: no stage-2 config or "
              "trajectory preparation is published for this kind", f"{_REPO}, config/stage2/, stage2_data_preparation.py",
              "b", ("object", "style", "identity", "colour")),
    Deviation("no official concept list: the target word is the only concept (the official lists are GPT-4o synonyms, "
              "20 per concept, written by src/gpt.py) and the anchor is the request's", f"{_REPO}, data/concepts/",
              "b", ("object", "identity", "colour")),
    Deviation("an artist other than Van Gogh and Kelly McKernan is erased by its name only (no official list)",
              f"{_REPO}, data/concepts/van-gogh.json, kelly.json", "b", ("style",)),
    Deviation("stage 1 is solved in float64 with torch.linalg.solve (a rank-deficient matrix refused); the official "
              "inverts in float32 with torch.inverse", f"{_REPO}, src/cfr_utils.py:168", "a"),
)


# --------------------------------------------------------------------------- the method
@register_method
class TRCE(ft.FinetuneMethod):
    name = "trce"
    description = ("TRCE: closed-form edit of the first [EoT] in cross-attention K/V, then an early-step contrastive "
                   "fine-tune (Chen et al., ICCV 2025)")
    config_class = TRCEConfig
    mini_defaults = MINI_DEFAULTS
    # World v1's preserve weight 1.0 (for its few preserve rows: the other objects in the world's contexts) is not
    # v2's: v2 runs the recipe's preserve set in the world's words (484 captions), and at weight 1.0 a row stage 1
    # moved nothing (2026-12-07, mini-v2-quick smoke, 8 images a prompt, run seed 1, 48 images a cell: named erasure
    # gain +0.00 on triangle, heart, tomas greer, ilse moravik and blight). With the recipe's weight (the official one
    # per row, scaled for coco_30k.csv): +0.79, +0.65, +0.94, +0.98 with far concepts and general captions down at
    # most 0.08, and blight +0.62 with them down 0.25 and 0.33 (tests/test_effects_v2.py).
    mini_default_worlds = {"closed_form_preserve_scale": ("v1",)}
    recipes = RECIPES
    prompt_params = ("trajectory_template",)
    edited_components = ("unet",)
    # 2: stage-2 gradients accumulate (official_accumulate), stage 1 refuses a rank-deficient solve, object templates
    # and COCO preservation for every kind, the official style concept lists
    algorithm_version = "3"
    deviations = TRCE_DEVIATIONS
    # lamb: the tiny test CLIP's final LayerNorm has weight 1 and bias 0, so every text row sums to 0 and the rows span
    # 31 of its 32 dimensions; the official lamb 0 is then (rightly) refused as rank-deficient (check_solvable)
    conformance_overrides = {"lamb": 0.01, "ddim_steps": 3, "max_early_step": 1, "epochs": 1, "images_per_prompt": 1,
                             "regularization_trajectories": 1, "regularization_batch_size": 1, "augment_num": 2,
                             "max_steps": 2}

    def apply(self, backbone: Backbone, request: ErasureRequest) -> Backbone:
        self.check_request(request)
        cfg: TRCEConfig = self.effective_config(backbone)
        _check(cfg)
        seed = ft.seed_of(cfg, request)
        start = time.perf_counter()
        frozen, edited = backbone, backbone.copy()
        edited.guidance_hooks = []
        mini = v1_world(backbone)
        concepts = [p for _, p in ft.target_prompts(request)]
        if request.kind == "style" and cfg.official_concept_lists and not mini:
            concepts = official_concepts(concepts)
        anchor = request.anchor

        # ---- stage 1
        templates = cfg.templates or (mini_contexts(request) if mini else OBJECT_TEMPLATES)
        templates = templates[: cfg.augment_num]
        c_old, c_new, pairs = eot_pairs(edited, concepts, anchor, templates)
        preserve = ft.preserve_prompts(request)  # the empty prompt when there is none
        if mini:  # the world's captions of each preserved concept: the mini model never saw a bare word
            kept = [p for p in preserve if p] or mini_preserve(request)
            preserve = [t.format(p) for p in kept for t in templates] or [""]
        keep = gram_rows(edited, preserve)
        condition = check_solvable(c_old, keep, erase_scale=1.0 / len(pairs),
                                   preserve_scale=cfg.closed_form_preserve_scale, lamb=cfg.lamb,
                                   n_preserve=len(preserve))
        edit_projections(edited, c_old, c_new, keep, erase_scale=1.0 / len(pairs),
                         preserve_scale=cfg.closed_form_preserve_scale, lamb=cfg.lamb)
        stage1_seconds = time.perf_counter() - start
        self.stats = {"stage1_pairs": len(pairs), "stage1_concepts": len(concepts),
                      "stage1_condition_number": float(f"{condition:.4g}"),
                      "stage1_seconds": round(stage1_seconds, 3)}
        if cfg.stage2:
            self._stage2(cfg, frozen, edited, request, concepts, templates if mini else [cfg.trajectory_template], seed)
        notes = [d.what for d in TRCE_DEVIATIONS if not d.kinds or request.kind in d.kinds]
        if not cfg.official_accumulate:
            notes.append("official_accumulate=False: stage-2 gradients zeroed every step (the official never does)")
        self.stats["deviations"] = "; ".join(notes)
        self.record_edit(edited, cfg, request)
        return edited

    def _stage2(self, cfg: TRCEConfig, frozen: Backbone, edited: Backbone, request: ErasureRequest,
                concepts: list[str], trajectory_templates: list[str], seed: int) -> None:
        import torch
        import torch.nn.functional as F

        run = ft.run_fingerprint(self, cfg, request, frozen)
        stage1 = edited.unet
        reg_unet = _frozen_copy(stage1)  # theta_1: the regularisation target
        params = ft.select_parameters(stage1, lambda n: "attn1" in n or ("attn2" in n and "to_q" in n))
        neg = [t.format(c) for c in concepts for t in trajectory_templates]
        safe = [" ".join(t.format(request.anchor).split()) for c in concepts for t in trajectory_templates]
        timesteps = ft.ddim_timesteps(frozen, cfg.ddim_steps)
        with torch.no_grad():
            emb_neg, emb_safe, emb_0 = frozen.encode(neg), frozen.encode(safe), frozen.encode([""])
        precision = ft.sampling_precision(cfg, frozen.device)
        malicious = ft.cached_tensors(cfg, "trce_malicious", run, lambda: sample_trajectories(
            frozen, neg, cfg.images_per_prompt, cfg.ddim_steps, cfg.trajectory_guidance, seed, precision, True))
        # unconditional samples (the official: prompt "" at guidance 7.5, i.e. the unconditional prediction)
        uncond = ft.cached_tensors(cfg, "trce_unconditional", run, lambda: sample_trajectories(
            frozen, [""], cfg.regularization_trajectories, cfg.ddim_steps, 1.0, seed + 1, precision, False))
        malicious = {k: v.to(frozen.device) for k, v in malicious.items()}
        uncond = {k: v.to(frozen.device) for k, v in uncond.items()}
        files = len(neg) * cfg.images_per_prompt
        last_early = max(1, min(cfg.max_early_step + 1, cfg.ddim_steps - 1))

        def loss_fn(step: int, gen: torch.Generator) -> torch.Tensor:
            f = step % files  # the official order: every trajectory once per epoch
            j, k = divmod(f, cfg.images_per_prompt)
            # the latent after official step s is the one before our step s + 1
            i = ft.randint(1, last_early + 1, gen)
            x = malicious["x"][j:j + 1, k, i].to(frozen.dtype)  # as ESD: autocast mixes it with the fp32 trainee
            e_0 = malicious["eps_uncond"][j:j + 1, k, i].float()
            e_c = malicious["eps_cond"][j:j + 1, k, i].float()
            t = timesteps[i]
            with torch.no_grad():
                e_s = ft.eps(frozen.unet, x, t, emb_safe[j:j + 1])
                prefer = e_s + cfg.guidance * (e_s - e_0)
                reject = e_c + cfg.guidance * (e_c - e_0)
            student = ft.eps(stage1, torch.cat([x, x]), t, torch.cat([emb_neg[j:j + 1], emb_0]))
            scores = [(student[n:n + 1] - prefer).pow(2).mean() - (student[n:n + 1] - reject).pow(2).mean()
                      for n in (0, 1)]
            target = sum(F.relu(cfg.beta * (s + cfg.margin)) for s in scores) / 2
            r = ft.randint(0, cfg.regularization_trajectories, gen, cfg.regularization_batch_size)
            steps_r = ft.randint(0, cfg.ddim_steps, gen, cfg.regularization_batch_size)
            x_r = torch.stack([uncond["x"][0, a, b] for a, b in zip(r, steps_r)]).to(frozen.dtype)
            t_r = torch.stack([timesteps[b] for b in steps_r])
            with torch.no_grad():
                kept = ft.eps(reg_unet, x_r, t_r, emb_0)
            preserve = F.mse_loss(ft.eps(stage1, x_r, t_r, emb_0), kept)
            return target + cfg.preserve_scale * preserve

        accumulate, state = accumulated_gradients(params) if cfg.official_accumulate else (None, None)
        result = ft.train(
            name=self.name, config=cfg, modules={"unet": stage1}, params=params, loss_fn=loss_fn,
            total_steps=cfg.epochs * files, lr=cfg.lr, seed=seed, fingerprint=run, device=frozen.device,
            optimizer="adamw", weight_decay=cfg.weight_decay, after_backward=accumulate, state=state,
        )
        done = result.steps - result.resumed_from
        sampled = (2 * len(neg) * cfg.images_per_prompt + cfg.regularization_trajectories) * cfg.ddim_steps  # CFG: 2
        self.stats.update(ft.stats_from(
            result, trained_parameters=sum(p.numel() for p in params.values()),
            unet_forward=sampled + done * (1 + 2 + 2 * cfg.regularization_batch_size),
            unet_backward=done * (2 + cfg.regularization_batch_size),
        ))


@no_grad
def sample_trajectories(backbone: Backbone, prompts: list[str], per_prompt: int, steps: int, guidance: float,
                        seed: int, precision: str, keep_eps: bool, batch_size: int = 32) -> dict[str, torch.Tensor]:
    """DDIM trajectories of the frozen model, as ``stage2_data_preparation.py`` stores them: ``x`` [prompt, k, step,
    *latent] (the latent before each step) and, with ``keep_eps``, the two noise predictions CFG made there
    (``eps_uncond``, ``eps_cond``). Sampled in batches over prompts and samples (the official: one at a time)."""
    import torch

    from bench.generate import SamplerConfig, denoise

    gen = ft.step_generator(seed, -1, stream=23)
    jobs = [(j, k) for j in range(len(prompts)) for k in range(per_prompt)]
    noise = ft.randn((len(jobs), *backbone.latent_shape), gen, backbone)
    sampler = SamplerConfig("ddim", steps=steps, guidance=guidance, precision=precision)
    out: dict[str, list[torch.Tensor]] = {"x": [], "eps_uncond": [], "eps_cond": []}
    for start in range(0, len(jobs), batch_size):
        part = jobs[start:start + batch_size]
        recorder = ft._RecordedCFG()
        _, traj = denoise(backbone, [prompts[j] for j, _ in part], noise[start:start + len(part)], sampler,
                          negative_prompts=[""] * len(part), hooks=[recorder] if keep_eps else [],
                          return_trajectory=True)
        out["x"].append(torch.stack([x for _, _, x in traj], dim=1).cpu())
        if keep_eps:
            out["eps_uncond"].append(torch.stack([u for u, _ in recorder.pairs], dim=1).cpu())
            out["eps_cond"].append(torch.stack([c for _, c in recorder.pairs], dim=1).cpu())
    return {k: torch.cat(v).unflatten(0, (len(prompts), per_prompt)) for k, v in out.items() if v}


def accumulated_gradients(params: dict[str, torch.nn.Parameter]
                          ) -> tuple[Callable[[], None], dict[str, torch.Tensor]]:
    """The official stage-2 loop's gradients, which are never zeroed (``run_trce_stage2.py`` lines 190-191): an
    ``after_backward`` callback that replaces each step's gradient by the running sum of all steps' gradients so
    far, and that sum as checkpoint ``state`` (so a resumed run continues the same sum)."""
    import torch

    total = {f"grad_sum.{n}": torch.zeros_like(p, dtype=torch.float32) for n, p in params.items()}

    def accumulate() -> None:
        for n, p in params.items():
            if p.grad is not None:
                acc = total[f"grad_sum.{n}"]
                acc += p.grad.float()
                p.grad.copy_(acc)

    return accumulate, total


def official_concepts(concepts: list[str]) -> list[str]:
    """``concepts`` with each artist that has an official concept file (:data:`STYLE_CONCEPTS`) replaced by the
    file's 20 entries (the official stage 1 erases the whole list, ``concept_num 20``)."""
    out: list[str] = []
    for c in concepts:
        out.extend(STYLE_CONCEPTS.get(" ".join(c.lower().split()), (c,)))
    return list(dict.fromkeys(out))


def check_solvable(erase_rows: torch.Tensor, preserve_rows: torch.Tensor, *, erase_scale: float,
                   preserve_scale: float, lamb: float, n_preserve: int) -> float:
    """The condition number of stage 1's normal matrix ``lamb I + erase_scale C^T C + preserve_scale P^T P``;
    raises ValueError when its numerical rank is below the embedding size (eigenvalues under ``max * d * eps``,
    float64 machine epsilon, count as zero: the rule of ``torch.linalg.matrix_rank``). Such a solve has no unique
    answer and ``torch.linalg.solve`` returns weights blown up along the missing directions instead of failing."""
    import torch

    d = erase_rows.shape[1]
    gram = lamb * torch.eye(d, dtype=torch.float64, device=erase_rows.device)
    gram = gram + erase_scale * erase_rows.double().T @ erase_rows.double()
    if preserve_rows.numel() and preserve_scale > 0:
        p = preserve_rows.double().to(gram.device)
        gram = gram + preserve_scale * p.T @ p
    eig = torch.linalg.eigvalsh(gram)
    top = float(eig.max())
    tol = top * d * torch.finfo(torch.float64).eps
    rank = int((eig > tol).sum())
    condition = top / float(eig.min()) if float(eig.min()) > 0 else float("inf")
    if rank < d:
        raise ValueError(
            f"trce: the stage-1 closed-form solve is rank-deficient (numerical rank {rank} of {d}, condition number "
            f"{condition:.3g}; lamb={lamb}, {erase_rows.shape[0]} concept rows, {n_preserve} preserve prompt(s)): "
            "its answer would be weights blown up along the missing directions. Preserve prompts that span the "
            "text embedding (the official COCO cache: the recipes' preserve_file coco_30k.csv) or set lamb > 0")
    return condition




def _frozen_copy(module: torch.nn.Module) -> torch.nn.Module:
    import copy

    out = copy.deepcopy(module)
    out.requires_grad_(False)
    return out.eval()


def _check(cfg: TRCEConfig) -> None:
    problems = []
    for name in ("augment_num", "epochs", "images_per_prompt", "regularization_trajectories",
                 "regularization_batch_size", "ddim_steps"):
        if getattr(cfg, name) < 1:
            problems.append(f"{name}={getattr(cfg, name)} (must be >= 1)")
    if cfg.ddim_steps < 2 and cfg.stage2:
        problems.append(f"ddim_steps={cfg.ddim_steps} (stage 2 needs >= 2: it trains on steps after the first)")
    bad = [t for t in [cfg.trajectory_template, *cfg.templates] if "{}" not in t]
    if bad:
        problems.append(f"template {bad[0]!r} has no '{{}}' for the concept (trajectory_template / templates), "
                        "e.g. 'a photo of {}'")
    if cfg.max_early_step < 0:
        problems.append(f"max_early_step={cfg.max_early_step} (must be >= 0)")
    for name in ("lamb", "closed_form_preserve_scale", "preserve_scale", "lr"):
        if getattr(cfg, name) < 0:
            problems.append(f"{name}={getattr(cfg, name)} (must be >= 0)")
    if problems:
        raise ValueError("trce: bad config: " + "; ".join(problems))

