"""CA — Concept Ablation (Kumari et al., "Ablating Concepts in Text-to-Image Diffusion Models", ICCV 2023).

Map the distribution of the target concept onto an anchor concept's. The model-based variant
(the paper's default, eq. 3) generates images of the anchor with the unedited model, noises them
and trains the target prompt's prediction to match the anchor prompt's prediction of the model
being trained, taken under no-grad (``model_pred_anchor`` in the official ``diffusers/train.py``):

    L = E_{x ~ p(x | c_anchor), t, eps} || eps_theta(x_t, c_target, t) - sg(eps_theta(x_t, c_anchor, t)) ||^2

with (c_target, c_anchor) a pair of prompts that differ only in the concept ("a photo of a grumpy
cat" / "a photo of a cat"). Optional prior preservation adds the ordinary denoising loss on the
anchor images under their own prompts (``prior_loss_weight``).

Prompts. Two ways, as the official code has them per concept type:

* ``anchor_prompts`` empty (objects): the request's ``target_prompts`` (or the concept word) are
  the target prompts; their anchor prompts replace the target word by ``request.anchor``;
* ``anchor_prompts`` given (styles, nudity): these are the captions of the anchor images, and each
  target prompt wraps its caption with the concept by one of ``target_templates`` (``{prompt}`` the
  caption, ``{concept}`` the target), as ``CustomDiffusionDataset.__getprompt__`` of the official
  ``diffusers/utils.py`` does ("{prompt}, in the style of {concept}").

Defaults (nupurkmr9/concept-ablation @ c11fb1b, ``diffusers/train.py`` and ``diffusers/README.md``):
cross-attention ``to_k``/``to_v`` train (``parameter_group="cross-attn"``; "attn" all attention
projections, the nudity recipe; "full-weight" the whole UNet); AdamW with weight decay 1e-2
(``--adam_weight_decay``); 1000 anchor images (``--num_class_images``) sampled with 25 steps at
guidance 6 (the script uses DPM-Solver; we sample with DDIM, ``sample_sampler="dpm"`` for DPM-Solver++);
100 steps at lr 2e-6 scaled by the total batch (``--scale_lr``: 2e-6 x 4 per GPU x 2 GPUs = 1.6e-5; x2 more
with prior preservation).
Per-kind values are in :attr:`ConceptAblation.recipes`. Not reproduced: the random-resize
augmentation with its loss mask (the recipes here all run ``--noaug`` or use the full image) and the
horizontal flip.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from methods import _finetune as ft
from methods.base import ErasureRequest, register_method
from methods.recipes import Recipe

if TYPE_CHECKING:
    import torch

    from bench.backbone import Backbone


@dataclass
class CAConfig(ft.FinetuneConfig):
    iterations: int = 100  # --max_train_steps (README: style and object)
    lr: float = 1.6e-5  # 2e-6 x total batch 8 (--scale_lr; 4 per GPU x 2 GPUs)
    batch_size: int = 8
    weight_decay: float = 1e-2  # AdamW, --adam_weight_decay (train.py)
    parameter_group: Literal["cross-attn", "attn", "full-weight"] = "cross-attn"
    num_anchor_images: int = 1000  # --num_class_images (train.py default)
    sample_steps: int = 25  # the anchor images: num_inference_steps=25, guidance_scale=6.0 (train.py)
    sample_guidance: float = 6.0
    sample_sampler: Literal["ddim", "dpm"] = "ddim"  # of the anchor images (see the module docstring)
    sample_negative_prompt: str = ""  # "{concept}" is replaced; the nudity recipe's caption_target
    prior_preservation: bool = False
    prior_loss_weight: float = 1.0
    anchor_prompts: list[str] = field(default_factory=list)  # captions of the anchor images (see module docstring)
    target_templates: list[str] = field(default_factory=list)  # "{prompt}" + "{concept}": a caption made a target prompt


MINI_DEFAULTS: dict[str, Any] = {
    "iterations": 120,
    # lr 3e-4 moved the target's erasure rate from 0.21 to 0.29 on the step-1000 mini model; 1e-3 to
    # 0.42 (240 iterations: 0.46), other-object accuracy 0.89 -> 0.82 (2 images x 12 prompts each).
    # Step-6000 model: lr 1e-3 erased 0.00 -> 0.08 (default run); 3e-3 -> 0.46 (synonyms 0.67), other
    # objects 1.00 -> 1.00 (12 target / 14 other prompts x 2 images).
    "lr": 3e-3,
    "num_anchor_images": 64,
    # Anchor images drawn with the default run's sampler (DPM-Solver++ (2M), 10 steps: 20 UNet rows an image
    # against DDIM 25's 50; the mini-adherence suite keeps the model card's figures on it). Tuning seed, DPM++ 10
    # probe, circle erasure / synonyms / other objects: DDIM 25 images 0.58 / 0.71 / 0.75 in 50 s, DPM++ 10
    # images 0.92 / 0.96 / 0.86 in 36 s (benchmarks/mini_method_probe.py
    # 'ca:{"sample_sampler":"ddim","sample_steps":25}' 'ca:'). Then the effect seed (tests/): 0.875 / 0.875 / 0.79.
    "sample_sampler": "dpm",
    "sample_steps": 10,
    "sample_guidance": 5.0,
    # Adam without weight decay, as the mini figures above were measured (the AdamW fix is an SD default)
    "weight_decay": 0.0,
}
# World v2 takes a tenth of that rate: at 3e-3 CA wrecks v2's model. On the tuning seed (0; mini-v2-quick, tier smoke,
# 4 images a prompt, n 24 a cell; targets the effect tests do not use),
# named erasure gain / far / general accuracy (unedited far / general: square 0.88 / 0.46, orla venn 0.92 / 0.58,
# hexagon 0.83 / 0.50, bram okonjo 1.00 / 0.75, blight 1.00 / 0.42):
#   lr 3e-3: square +0.62 / 0.46 / 0.00, orla venn +1.00 / 0.00 / 0.00, hexagon +0.92 / 0.38 / 0.00,
#            bram okonjo +0.46 / 0.04 / 0.04, blight +0.96 / 0.62 / 0.29;
#   lr 1e-3: square +0.92 / 0.29 / 0.00, orla venn +1.00 / 0.33 / 0.33, hexagon +0.92 / 0.38 / 0.17,
#            bram okonjo +0.46 / 0.00 / 0.29, blight +0.71 / 0.96 / 0.46 (meets the bar);
#   lr 3e-4: square +0.92 / 0.92 / 0.46 and hexagon +0.58 / 0.83 / 0.42 (both meet it), orla venn +1.00 / 0.67 / 0.46,
#            bram okonjo +0.46 / 0.79 / 0.58, blight +0.12 / 1.00 / 0.46;
#   lr 1e-4: orla venn +0.88 / 0.88 / 0.54 (meets it), square +0.00 / 0.83 / 0.46, hexagon +0.04 / 0.83 / 0.46,
#            bram okonjo +0.25 / 1.00 / 0.67, blight +0.12 / 1.00 / 0.50.
# benchmarks/mini_v2_rates.py's rule (the rate under which the most tuning targets meet the effect bar) picks
# it (benchmarks/results/mini_v2_rates.json); the held-out figures are in tests/test_effects_v2.py.
MINI_DEFAULTS_BY_WORLD: dict[str, dict[str, Any]] = {"v2": {"lr": 3e-4}}

# Captions of anchor images, in our words (the official code reads ~200 LAION captions from
# assets/finetune_prompts/people.txt and painting.txt; they are not vendored here).
PEOPLE_CAPTIONS = (
    "a portrait of a woman standing in a garden", "a man sitting on a park bench", "a young girl smiling at the camera",
    "a boy playing on the beach", "a group of friends laughing together", "an elderly man reading a newspaper",
    "a woman walking down a city street", "a child holding a red balloon", "a couple dancing at a wedding",
    "a man jogging along a river", "a mother and her daughter cooking dinner", "a teenager with headphones on a bus",
    "a woman doing yoga in a bright studio", "a father carrying his son on his shoulders",
    "a person lying on the grass in the sun", "a bodybuilder posing on a stage",
)
PAINTING_CAPTIONS = (
    "a painting of a harbour at dusk", "an oil painting of a vase of flowers",
    "a landscape painting with mountains and a lake", "a painting of a village street in the rain",
    "a portrait painting of an old fisherman", "a painting of a wheat field under a cloudy sky",
    "a still life painting of fruit on a table", "a painting of a bridge over a river",
    "a painting of a woman reading by a window", "a painting of boats on a calm sea",
    "a painting of a night sky over a small town", "a painting of a forest path in autumn",
)
OBJECT_PROMPTS = (
    "a photo of a {concept}", "a {concept} on a wooden table", "a {concept} in a garden", "a close-up photo of a {concept}",
    "a {concept} next to a window", "a {concept} in a living room", "a {concept} on a city street",
    "a drawing of a {concept}",
)
_REPO = "nupurkmr9/concept-ablation @ c11fb1b"
_README = f"{_REPO}, diffusers/README.md"
_TRAIN = f"{_REPO}, diffusers/train.py"
_UTILS = f"{_REPO}, diffusers/utils.py (CustomDiffusionDataset.__getprompt__)"

RECIPES = {
    "nudity": Recipe(
        kind="nudity",
        params={
            "parameter_group": "attn", "iterations": 400, "lr": 6.4e-5, "batch_size": 8,
            "prior_preservation": True, "prior_loss_weight": 1.0, "num_anchor_images": 1000,
            "sample_steps": 25, "sample_guidance": 6.0, "sample_negative_prompt": "{concept}, nsfw",
            "anchor_prompts": list(PEOPLE_CAPTIONS),
            "target_templates": ["{concept}, nsfw, {prompt}", "in {concept}, nsfw style, {prompt}",
                                 "{prompt}, {concept}, nsfw"],
        },
        sources={
            "parameter_group": f"{_README} (nudity: --parameter_group attn)",
            "iterations": f"{_README} (nudity: --max_train_steps=400)",
            "lr": f"{_README} + {_TRAIN} (--learning_rate 4e-6 x batch 4 x 2 GPUs x 2 for prior preservation)",
            "batch_size": f"{_README} (--train_batch_size=4 on 2 GPUs)",
            "prior_preservation": f"{_README} (--with_prior_preservation)",
            "prior_loss_weight": f"{_TRAIN} (--prior_loss_weight default 1.0)",
            "sample_guidance": f"{_TRAIN} (class images: guidance_scale=6.0)",
            "num_anchor_images": f"{_TRAIN} (--num_class_images default 1000)",
            "sample_steps": f"{_TRAIN} (class images: 25 steps, guidance 6.0)",
            "sample_negative_prompt": f"{_TRAIN} (nudity: negative_prompt = caption_target 'nudity, nsfw')",
            "anchor_prompts": "our own person captions; official: assets/finetune_prompts/people.txt (LAION)",
            "target_templates": f"{_UTILS} (nudity: three ways to add caption_target 'nudity, nsfw')",
        },
        note="anchor captions are 16 written here instead of the 203 LAION captions of people.txt; DDIM instead of "
             "DPM-Solver for the anchor images; no horizontal flip",
    ),
    "style": Recipe(
        kind="style",
        params={
            "parameter_group": "cross-attn", "iterations": 100, "lr": 1.6e-5, "batch_size": 8,
            "num_anchor_images": 1000, "sample_steps": 25, "sample_guidance": 6.0,
            "anchor_prompts": list(PAINTING_CAPTIONS),
            # r = 1 and r = 2 of the official code are the same form: it is drawn with probability 2/3
            "target_templates": ["{prompt}, in the style of {concept}", "in {concept}'s style, {prompt}",
                                 "in {concept}'s style, {prompt}"],
        },
        anchor="painting",
        sources={
            "parameter_group": f"{_README} (style: --parameter_group cross-attn)",
            "iterations": f"{_README} (style: --max_train_steps=100)",
            "lr": f"{_README} (--learning_rate=2e-6 --scale_lr, batch 4 x 2 GPUs)",
            "batch_size": f"{_README} (--train_batch_size=4 on 2 GPUs)",
            "num_anchor_images": f"{_TRAIN} (--num_class_images default 1000)",
            "sample_steps": f"{_TRAIN} (class images: 25 steps, guidance 6.0)",
            "sample_guidance": f"{_TRAIN} (class images: guidance_scale=6.0)",
            "anchor": f"{_README} (style: --class_prompt painting)",
            "anchor_prompts": "our own painting captions; official: assets/finetune_prompts/painting.txt (LAION)",
            "target_templates": f"{_UTILS} (style)",
        },
        note="anchor captions are 12 written here instead of the LAION captions of painting.txt; DDIM instead of "
             "DPM-Solver for the anchor images; no horizontal flip",
    ),
    "object": Recipe(
        kind="object",
        params={"parameter_group": "cross-attn", "iterations": 100, "lr": 1.6e-5, "batch_size": 8,
                "num_anchor_images": 1000, "sample_steps": 25, "sample_guidance": 6.0},
        target_prompts=OBJECT_PROMPTS,
        sources={
            "parameter_group": f"{_README} (objects: --parameter_group cross-attn)",
            "iterations": f"{_README} (objects: --max_train_steps=100)",
            "lr": f"{_README} (--learning_rate=2e-6 --scale_lr, batch 4 x 2 GPUs)",
            "batch_size": f"{_README} (--train_batch_size=4 on 2 GPUs)",
            "num_anchor_images": f"{_TRAIN} (--num_class_images default 1000)",
            "sample_steps": f"{_TRAIN} (class images: 25 steps, guidance 6.0)",
            "sample_guidance": f"{_TRAIN} (class images: guidance_scale=6.0)",
            "target_prompts": "our own captions; official: ~200 captions of the anchor written by ChatGPT "
                              "(getanchorprompts) with the anchor word replaced by the target",
            "anchor": "the request's anchor (official: the anchor category, e.g. 'cat' for 'grumpy cat')",
        },
        note="set the anchor category per target (e.g. anchor: cat for 'grumpy cat'); with an anchor that shares "
             "words with the target the official README adds prior_preservation",
    ),
}


def parameter_rule(group: str):
    if group == "cross-attn":
        return lambda n: "attn2" in n and (".to_k." in n or ".to_v." in n)
    if group == "attn":  # every attention projection, self and cross (official create_custom_diffusion)
        return lambda n: any(f".{k}" in n for k in ("to_q.", "to_k.", "to_v.", "to_out."))
    if group == "full-weight":
        return lambda n: True
    raise ValueError(f"unknown CA parameter_group {group!r}; valid: cross-attn, attn, full-weight")


@register_method
class ConceptAblation(ft.FinetuneMethod):
    name = "ca"
    # remaining differences from the official code (docs/DEVELOPING.md, "Deviations")
    deviations = (
        {
            "what": ("anchor images are sampled with DDIM (sample_sampler='dpm' for DPM-Solver++); the official "
                "samples with DPM-Solver"),
            "official": "nupurkmr9/concept-ablation @ c11fb1b, diffusers/train.py",
            "class": "a",
        },
        {
            "what": ("no random-resize augmentation with its loss mask and no horizontal flip (the recipes run "
                "--noaug or the full image)"),
            "official": "nupurkmr9/concept-ablation @ c11fb1b, diffusers/utils.py (CustomDiffusionDataset)",
            "class": "a",
        },
    )
    description = "Concept Ablation: map the target's distribution onto the anchor's (Kumari et al. 2023)"
    config_class = CAConfig
    mini_defaults = MINI_DEFAULTS
    mini_defaults_by_world = MINI_DEFAULTS_BY_WORLD
    recipes = RECIPES
    prompt_params = ("sample_negative_prompt", "anchor_prompts", "target_templates")

    def apply(self, backbone: Backbone, request: ErasureRequest) -> Backbone:
        import torch
        import torch.nn.functional as F

        self.check_request(request)
        cfg: CAConfig = self.effective_config(backbone)
        seed = ft.seed_of(cfg, request)
        run = ft.run_fingerprint(self, cfg, request, backbone)
        frozen, edited = backbone, backbone.copy()
        edited.guidance_hooks = []
        params = ft.select_parameters(edited.unet, parameter_rule(cfg.parameter_group))

        pairs = training_pairs(cfg, request)
        # anchor images: num_anchor_images spread over the anchor prompts
        which = [k % len(pairs) for k in range(cfg.num_anchor_images)]
        negative = cfg.sample_negative_prompt.format(concept=", ".join(request.targets))
        anchors = ft.cached_tensors(cfg, "ca_anchor_images", run, lambda: {"x0": ft.sample_latents(
            frozen, [pairs[k][1] for k in which], ft.step_generator(seed, -1, stream=1), cfg.sample_steps,
            cfg.sample_guidance, precision=ft.sampling_precision(cfg, backbone.device), negative_prompt=negative,
            sampler=cfg.sample_sampler)}
        )["x0"].to(backbone.device, backbone.dtype)
        with torch.no_grad():
            emb_target = frozen.encode([p for p, _ in pairs])
            emb_anchor = frozen.encode([a for _, a in pairs])
        which_t = torch.tensor(which, device=backbone.device)
        n_train = backbone.scheduler.config.num_train_timesteps

        def loss_fn(step: int, gen: torch.Generator) -> torch.Tensor:
            pick = torch.tensor(ft.randint(0, len(anchors), gen, cfg.batch_size), device=backbone.device)
            t = torch.tensor(ft.randint(0, n_train, gen, cfg.batch_size), device=backbone.device)
            x0, k = anchors[pick], which_t[pick]
            noise = ft.randn(x0.shape, gen, backbone)
            x_t = ft.add_noise(backbone, x0, noise, t)
            with torch.no_grad():  # the anchor's prediction by the model being trained (official model_pred_anchor)
                target = ft.eps(edited.unet, x_t, t, emb_anchor[k])
            loss = F.mse_loss(ft.eps(edited.unet, x_t, t, emb_target[k]), target)
            if cfg.prior_preservation:
                loss = loss + cfg.prior_loss_weight * F.mse_loss(ft.eps(edited.unet, x_t, t, emb_anchor[k]), noise.float())
            return loss

        result = ft.train(
            name=self.name, config=cfg, modules={"unet": edited.unet}, params=params, loss_fn=loss_fn,
            total_steps=cfg.iterations, lr=cfg.lr, seed=seed, optimizer="adamw", weight_decay=cfg.weight_decay,
            fingerprint=run, device=backbone.device,
        )
        done = result.steps - result.resumed_from
        passes = 2 if cfg.prior_preservation else 1
        self.stats = ft.stats_from(
            result, trained_parameters=sum(p.numel() for p in params.values()),
            unet_forward=done * cfg.batch_size * (1 + passes) + cfg.num_anchor_images * cfg.sample_steps * 2,
            unet_backward=done * cfg.batch_size * passes,
        )
        self.record_edit(edited, cfg, request)
        return edited


def training_pairs(config: CAConfig, request: ErasureRequest) -> list[tuple[str, str]]:
    """(target prompt, anchor prompt) pairs; the anchor images are sampled from the anchor prompts.

    Without ``anchor_prompts``: the target prompts with the target word replaced by the anchor. With them:
    caption ``i`` of ``anchor_prompts`` wrapped by each of ``target_templates`` in turn (the official code draws
    a template at random per sample), the targets taken in turn as the official ``caption_target`` list is."""
    if not config.anchor_prompts:
        return [(p, ft.replace_concept(p, t, request.anchor)) for t, p in ft.target_prompts(request)]
    templates = config.target_templates or ["{concept}, {prompt}"]
    pairs = []
    for j, template in enumerate(templates):
        for i, caption in enumerate(config.anchor_prompts):
            concept = request.targets[(i + j) % len(request.targets)]
            pairs.append((template.format(concept=concept, prompt=caption), caption))
    return pairs
