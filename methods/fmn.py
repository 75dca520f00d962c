"""FMN — Forget-Me-Not (Zhang et al., "Forget-Me-Not: Learning to Forget in Text-to-Image Diffusion Models", arXiv:2303.17591, 2023).

Attention re-steering: fine-tune the UNet so that its cross-attention no longer looks at the concept's
tokens. With ``A^l_t(x_t, c)`` the softmax cross-attention probabilities of layer ``l`` (every head,
every query pixel) and ``P`` the token positions of the concept in the prompt (plus the end-of-text
token, ``use_pooler``), the loss is the Frobenius norm of those probabilities over all cross-attention
layers (Sec. 3.2, Fig. 2):

    L = || concat_l A^l_t(x_t, c)[:, :, P] ||_F ,   x_t = sqrt(abar_t) x_0 + sqrt(1 - abar_t) eps,

with ``x_0`` an image of the concept, ``t`` uniform over the training timesteps and ``c`` the prompt
"a photo of {concept}" (objects, identities) or "a photo in the style of {concept}" (styles). No
denoising loss: the noise prediction is computed only to get the attention maps.

Defaults (SHI-Labs/Forget-Me-Not @ a4a81e8, ``configs/attn.yaml`` and ``src/train_attn.py``): 35 steps,
AdamW lr 2e-6 (constant), weight decay 0.01, betas (0.9, 0.999), eps 1e-8, gradient norm clipped to 1, batch 1,
the whole UNet trained (``only_optimize_ca: false``; ``"cross-attn"`` trains only ``attn2``), the
end-of-text token in the loss (``use_pooler: true``: every position holding its id, which on a tokenizer
that pads with it, as SD 1.x's, includes the padding), images of the concept noised (``no_real_image: false``).

Deviations from the official code (also in :attr:`ForgetMeNot.deviations`):

- The concept images are sampled from the unedited model (``num_images`` of the target prompts, DDIM
  ``sample_steps`` at ``sample_guidance``); the official code reads real photos from ``data/<concept>/``
  (ten in its example).
- No textual-inversion stage: the official default (``use_ti: true``) first inverts the photos into new
  tokens (``configs/ti.yaml``, 500 steps) and re-steers attention away from those; here the concept's own
  words are used, the code's ``use_ti: false`` path (the README: "Set use_ti to use inverted tokens or
  plain text of a concept").
- With several prompts in a batch the concept positions are matched per sample; the official code repeats
  the batch's position masks head-major against diffusers' batch-major heads (the same at batch 1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from methods import _finetune as ft
from methods.base import ErasureRequest, register_method, target_phrases, v1_world
from methods.recipes import Recipe

if TYPE_CHECKING:
    import torch

    from bench.backbone import Backbone

_REPO = "SHI-Labs/Forget-Me-Not @ a4a81e8"
_ATTN = f"{_REPO}, configs/attn.yaml"
_TRAIN = f"{_REPO}, src/train_attn.py"

# The official prompt of one concept image, by the concept type of ``multi_concept`` (src/train_attn.py,
# ForgetMeNotDataset): "object" for objects and identities (its example is [elon-musk, object]), "style".
TEMPLATES = {"object": "a photo of {concept}", "style": "a photo in the style of {concept}"}


@dataclass
class FMNConfig(ft.FinetuneConfig):
    iterations: int = 35  # max_train_steps (configs/attn.yaml)
    lr: float = 2e-6  # learning_rate (configs/attn.yaml), constant schedule (lr_scheduler: constant)
    batch_size: int = 1  # train_batch_size (configs/attn.yaml)
    weight_decay: float = 1e-2  # adam_weight_decay (configs/attn.yaml), AdamW
    max_grad_norm: float = 1.0  # max_grad_norm (configs/attn.yaml)
    parameter_group: Literal["unet", "cross-attn"] = "unet"  # only_optimize_ca: false (configs/attn.yaml)
    use_pooler: bool = True  # use_pooler: true (configs/attn.yaml): the end-of-text token joins the loss
    no_real_image: bool = False  # no_real_image: false (configs/attn.yaml): x_t from pure noise when true
    # the prompts: "{concept}" is replaced by the target; empty: the official template of the request's kind
    # (TEMPLATES), or the request's target_prompts when a recipe gives them
    templates: list[str] = field(default_factory=list)
    # the concept images (a deviation: the official code reads real photos, ten in its example data/elon-musk/)
    num_images: int = 10  # as many as the official example's photos
    sample_steps: int = 50  # DDIM; diffusers' StableDiffusionPipeline default num_inference_steps
    sample_guidance: float = 7.5  # diffusers' StableDiffusionPipeline default guidance_scale
    sample_sampler: Literal["ddim", "dpm"] = "ddim"


# Chosen on the mini model with benchmarks/mini_method_probe.py on the tuning seed (12 target / 12 synonym / 14
# other-object prompts x 2 images; circle erasure / synonyms / other objects, the unedited model 0.00 / 0.00 / 1.00):
# the whole UNet at lr 3e-5, 60 steps: 0.33 / 0.50 / 0.75; lr 5e-5, 35 steps: 0.25 / 0.33 / 0.79; lr 2e-5, 100
# steps: 0.29 / 0.58 / 0.54 (re-steering the end-of-text token, which every prompt has, costs other objects);
# cross-attention only (the code's only_optimize_ca) at lr 1e-4: 0.00 / 0.00 / 1.00, at lr 3e-4: 0.33 / 0.50 / 1.00.
MINI_DEFAULTS: dict[str, Any] = {
    "iterations": 60,
    "lr": 3e-4,
    "parameter_group": "cross-attn",
    "batch_size": 4,
    "templates": ["a {concept}", "a red {concept}", "a striped blue {concept}", "a dotted green {concept}"],
    "num_images": 32,
    "sample_steps": 10,
    "sample_guidance": 5.0,
    "sample_sampler": "dpm",
    "weight_decay": 0.0,
}
# World v2 runs the paper's procedure (the recipe's template in the world's words, the whole UNet: v1's templates and
# cross-attention choice stay on v1) at its own rate. On the tuning seed (0; mini-v2-quick, tier smoke, 4 images a
# prompt, n 24 a cell), named erasure gain / far / general accuracy (the unedited model's far / general):
#   v1's values on v2 (cross-attn, v1 templates, lr 3e-4): square +0.58 / 0.25 / 0.00 (0.88 / 0.46),
#     orla venn +1.00 / 0.04 / 0.29 (0.92 / 0.58): the model is wrecked;
#   the paper's procedure, lr 3e-5: square +0.62 / 0.33 / 0.00, orla venn +0.75 / 0.33 / 0.29;
#   lr 2e-5: hexagon +0.88 / 0.38 / 0.00 (0.83 / 0.50), bram okonjo +0.04 / 1.00 / 0.50 (1.00 / 0.75),
#     blight +0.29 / 0.96 / 0.46 (1.00 / 0.42);
#   lr 1e-5: square +0.00 / 0.92 / 0.33, orla venn +0.17 / 0.88 / 0.71, hexagon +0.17 / 0.67 / 0.21,
#     bram okonjo -0.33 / 1.00 / 0.67, blight +0.17 / 1.00 / 0.58.
# Without the end-of-text positions (use_pooler false, not the code's default) hexagon is no better: lr 2e-5
# +0.71 / 0.38 / 0.00, 5e-5 +0.88 / 0.33 / 0.00. No rate erases with other concepts kept: 1e-5 is the largest rate
# tried that wrecks no tuning target (general accuracy above 0), and FMN erases little there, as FMN on SD erases
# little nudity (UnlearnDiffAtk's leaderboard: pre-attack ASR 88 %). The table: benchmarks/results/mini_v2_rates.json;
# held-out figures: tests/test_effects_v2.py.
MINI_DEFAULT_WORLDS: dict[str, tuple[str, ...]] = {"templates": ("v1",), "parameter_group": ("v1",)}
MINI_DEFAULTS_BY_WORLD: dict[str, dict[str, Any]] = {"v2": {"lr": 1e-5}}


def _recipe(kind: str, template: str, note: str = "") -> Recipe:
    return Recipe(
        kind=kind,
        params={"iterations": 35, "lr": 2e-6, "batch_size": 1, "weight_decay": 1e-2, "max_grad_norm": 1.0,
                "parameter_group": "unet", "use_pooler": True, "no_real_image": False, "templates": [template],
                "num_images": 10, "sample_steps": 50, "sample_guidance": 7.5},
        sources={"iterations": f"{_ATTN} (max_train_steps: 35)", "lr": f"{_ATTN} (learning_rate: 2.0e-06)",
                 "batch_size": f"{_ATTN} (train_batch_size: 1)",
                 "weight_decay": f"{_ATTN} (adam_weight_decay: 0.01, AdamW)",
                 "max_grad_norm": f"{_ATTN} (max_grad_norm: 1.)",
                 "no_real_image": f"{_ATTN} (no_real_image: false)",
                 "num_images": f"{_REPO}, data/elon-musk/ (ten photos; here sampled from the model: a deviation)",
                 "sample_steps": "diffusers StableDiffusionPipeline default (the concept images: a deviation)",
                 "sample_guidance": "diffusers StableDiffusionPipeline default (the concept images: a deviation)",
                 "parameter_group": f"{_ATTN} (only_optimize_ca: false: the whole UNet)",
                 "use_pooler": f"{_ATTN} (use_pooler: true)",
                 "templates": f"{_TRAIN} (ForgetMeNotDataset: concept type {'style' if kind == 'style' else 'object'})"},
        note="; ".join(filter(None, [note, "the README: steps and learning rate 'can vary concept by concept'"])),
    )


RECIPES = {
    "object": _recipe("object", TEMPLATES["object"]),
    "identity": _recipe("identity", TEMPLATES["object"], "identities are the code's 'object' type (its example: Elon Musk)"),
    "style": _recipe("style", TEMPLATES["style"]),
}


# --------------------------------------------------------------------------- the attention maps
class AttentionRecorder:
    """Collects, from every cross-attention layer it is attached to, the probabilities at the concept positions.

    ``positions`` is a boolean ``[B, L]`` mask over the text tokens; each call keeps
    ``probs[b, head, query, positions[b]]`` for every sample ``b`` (with gradient)."""

    def __init__(self):
        self.positions: torch.Tensor | None = None
        self.kept: list[torch.Tensor] = []

    def record(self, probs: torch.Tensor, heads: int) -> None:
        batch = self.positions.shape[0]
        per = probs.reshape(batch, heads, probs.shape[-2], probs.shape[-1])  # diffusers: batch-major heads
        self.kept.append(per.masked_select(self.positions[:, None, None, :]))

    def loss(self) -> torch.Tensor:
        """Eq. of the module docstring: the norm of everything kept since the last reset."""
        import torch

        return torch.cat(self.kept).float().norm()

    def reset(self, positions: torch.Tensor | None = None) -> None:
        self.kept, self.positions = [], positions


class RecordingCrossAttention:
    """Diffusers' plain (math) attention that hands its softmax probabilities to an :class:`AttentionRecorder`."""

    def __init__(self, recorder: AttentionRecorder):
        self.recorder = recorder

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        import torch

        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        four_d = hidden_states.ndim == 4
        if four_d:
            b, ch, h, w = hidden_states.shape
            hidden_states = hidden_states.view(b, ch, h * w).transpose(1, 2)
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch, length, _ = context.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, length, batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.head_to_batch_dim(attn.to_q(hidden_states))
        if encoder_hidden_states is not None and attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key = attn.head_to_batch_dim(attn.to_k(context))
        value = attn.head_to_batch_dim(attn.to_v(context))
        probs = attn.get_attention_scores(query, key, attention_mask)
        self.recorder.record(probs, attn.heads)
        out = attn.batch_to_head_dim(torch.bmm(probs, value))
        out = attn.to_out[1](attn.to_out[0](out))
        if four_d:
            out = out.transpose(-1, -2).reshape(b, ch, h, w)
        if attn.residual_connection:
            out = out + residual
        return out / attn.rescale_output_factor


def concept_positions(backbone: Backbone, prompt: str, concept: str, use_pooler: bool) -> list[bool]:
    """Which of the prompt's ``L`` token positions the loss reads: every occurrence of the concept's token
    sequence, and (``use_pooler``) every position holding the end-of-text id (``src/train_attn.py``)."""
    tok = backbone.tokenizer
    ids = tok(prompt, truncation=True, padding="max_length", max_length=tok.model_max_length).input_ids
    concept_ids = tok(concept, add_special_tokens=False).input_ids
    if not concept_ids:
        raise ValueError(f"fmn: concept {concept!r} has no tokens")
    k = len(concept_ids)
    starts = [i for i in range(len(ids) - k + 1) if ids[i:i + k] == concept_ids]
    if not starts:
        raise ValueError(f"fmn: the prompt {prompt!r} does not contain the concept {concept!r} as tokens")
    mask = [use_pooler and i == tok.eos_token_id for i in ids]
    for i in starts:
        mask[i:i + k] = [True] * k
    return mask


def training_prompts(config: FMNConfig, request: ErasureRequest, backbone: Backbone) -> list[tuple[str, str]]:
    """(concept, prompt) pairs: the config's templates, else the request's target prompts, else the official
    template of the request's kind (on the mini model the world's caption of the concept)."""
    if config.templates:
        return [(t, template.replace("{concept}", t)) for t in request.targets for template in config.templates]
    if request.target_prompts:
        return ft.target_prompts(request)
    if v1_world(backbone):
        return list(zip(request.targets, target_phrases(request, backbone)))
    template = TEMPLATES["style" if request.kind == "style" else "object"]
    return [(t, template.replace("{concept}", t)) for t in request.targets]


def parameter_rule(group: str):
    if group == "unet":
        return lambda n: True
    if group == "cross-attn":
        return lambda n: "attn2" in n
    raise ValueError(f"fmn: unknown parameter_group {group!r}; valid: unet, cross-attn")


@register_method
class ForgetMeNot(ft.FinetuneMethod):
    name = "fmn"
    description = "Forget-Me-Not: re-steer the cross-attention away from the concept's tokens (Zhang et al. 2023)"
    config_class = FMNConfig
    mini_defaults = MINI_DEFAULTS
    mini_default_worlds = MINI_DEFAULT_WORLDS
    mini_defaults_by_world = MINI_DEFAULTS_BY_WORLD
    recipes = RECIPES
    prompt_params = ("templates",)
    conformance_overrides = {"iterations": 2, "num_images": 2, "sample_steps": 2}
    deviations = (
        {"what": "concept images sampled from the unedited model (official: real photos in data/<concept>/)",
         "official": "SHI-Labs/Forget-Me-Not @ a4a81e8, src/train_attn.py", "class": "b"},
        {"what": "no textual-inversion stage: the concept's own words (the code's use_ti: false path)",
         "official": "SHI-Labs/Forget-Me-Not @ a4a81e8, src/train_attn.py", "class": "a"},
        {"what": "concept positions matched per sample (official: head-major mask repeat; same at batch 1)",
         "official": "SHI-Labs/Forget-Me-Not @ a4a81e8, src/train_attn.py", "class": "a"},
    )

    def apply(self, backbone: Backbone, request: ErasureRequest) -> Backbone:
        import torch

        self.check_request(request)
        cfg: FMNConfig = self.effective_config(backbone)
        for name in ("iterations", "batch_size", "num_images", "sample_steps"):
            if getattr(cfg, name) < 1:
                raise ValueError(f"fmn: {name}={getattr(cfg, name)} must be at least 1")
        seed = ft.seed_of(cfg, request)
        run = ft.run_fingerprint(self, cfg, request, backbone)
        frozen, edited = backbone, backbone.copy()
        edited.guidance_hooks = []
        params = ft.select_parameters(edited.unet, parameter_rule(cfg.parameter_group))

        pairs = training_prompts(cfg, request, backbone)
        masks = torch.tensor([concept_positions(backbone, p, c, cfg.use_pooler) for c, p in pairs],
                             device=backbone.device)
        which = [k % len(pairs) for k in range(cfg.num_images)]
        images = ft.cached_tensors(cfg, "fmn_concept_images", run, lambda: {"x0": ft.sample_latents(
            frozen, [pairs[k][1] for k in which], ft.step_generator(seed, -1, stream=1), cfg.sample_steps,
            cfg.sample_guidance, precision=ft.sampling_precision(cfg, backbone.device), sampler=cfg.sample_sampler)}
        )["x0"].to(backbone.device, backbone.dtype)
        with torch.no_grad():
            emb = frozen.encode([p for _, p in pairs])
        which_t = torch.tensor(which, device=backbone.device)
        n_train = backbone.scheduler.config.num_train_timesteps

        recorder = AttentionRecorder()
        stock = edited.unet.attn_processors
        edited.unet.set_attn_processor({k: RecordingCrossAttention(recorder) if k.endswith("attn2.processor") else p
                                        for k, p in stock.items()})

        def loss_fn(step: int, gen: torch.Generator) -> torch.Tensor:
            pick = torch.tensor(ft.randint(0, len(images), gen, cfg.batch_size), device=backbone.device)
            t = torch.tensor(ft.randint(0, n_train, gen, cfg.batch_size), device=backbone.device)
            x0, k = images[pick], which_t[pick]
            noise = ft.randn(x0.shape, gen, backbone)
            x_t = ft.add_noise(backbone, torch.zeros_like(x0) if cfg.no_real_image else x0, noise, t)
            recorder.reset(masks[k])
            ft.eps(edited.unet, x_t, t, emb[k])  # only for the attention maps it records
            loss = recorder.loss()
            recorder.reset()
            return loss

        plist = list(params.values())
        try:
            result = ft.train(
                name=self.name, config=cfg, modules={"unet": edited.unet}, params=params, loss_fn=loss_fn,
                total_steps=cfg.iterations, lr=cfg.lr, seed=seed, optimizer="adamw", weight_decay=cfg.weight_decay,
                after_backward=lambda: torch.nn.utils.clip_grad_norm_(plist, cfg.max_grad_norm),
                fingerprint=run, device=backbone.device,
            )
        finally:
            edited.unet.set_attn_processor(stock)
        done = result.steps - result.resumed_from
        self.stats = ft.stats_from(
            result, trained_parameters=sum(p.numel() for p in params.values()),
            unet_forward=done * cfg.batch_size + cfg.num_images * cfg.sample_steps * 2,
            unet_backward=done * cfg.batch_size, deviations="; ".join(d["what"] for d in self.deviations_for()),
        )
        self.record_edit(edited, cfg, request)
        return edited
