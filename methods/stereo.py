"""STEREO (Srivatsan et al., "STEREO: A Two-Stage Framework for Adversarially Robust Concept Erasing from
Text-to-Image Diffusion Models", CVPR 2025, arXiv 2408.16807; koushiksrivats/robust-concept-erasing).

Stage 1, Search Thoroughly Enough (STE, ``utils/stereo.py: search_thoroughly_enough``): ``rounds`` times, (a) erase
the current concept c_r from the UNet with ESD's negative guidance in its APG form, then (b) attack the erased model
with concept inversion: a new token ``<stereo-r>`` (initialised from ``initializer``) learns, by textual inversion
on a gallery of concept images, an embedding that makes the ERASED model denoise them again. The next round erases
that token (c_{r+1} = ``<stereo-r>``), so each round's erasure is attacked and the attack erased in turn (adversarial
training used as a search for strong adversarial prompts). The erasing loss (``train_erasing``), x_t sampled by the
model being trained with c_r (guidance ``start_guidance``) down to a random DDIM step, teacher theta_r the model at
the round's start:

    L_STE = || eps_theta(x_t, c_r, t) - [e_c - (s - 1) * APG(e_c - e_0)] ||^2 ,
    e_c = eps_theta_r(x_t, c_r, t), e_0 = eps_theta_r(x_t, "", t), s = ``negative_guidance``,

where APG (Sadat et al. 2024, ``utils/apg.py: normalized_guidance``) splits a difference d into its parts parallel
and orthogonal to e_c and returns ``d_orth + eta * d_par`` (eta 1: d itself, the official setting).

Stage 2, Robustly Erase Once (REO, ``robustly_erase_once``): from the ORIGINAL UNet, erase the target and the first
``num_adv`` STE tokens at once with an anchor-based compositional target (``normalized_compositional_guidance``).
Each iteration draws an erase concept c (stratified over the iterations) and an anchor prompt a (stratified), samples
x_t with c from the model being trained, and with the frozen original's predictions

    target = e_0 + (g - 1) * APG(e_a - e_0) + (-g - 1) * mean_n APG(e_n - e_0)      (g = compositional scale)
    L_REO  = || eps_theta(x_t, c, t) - target ||^2 ,

n over every erase concept (the target and the adversarial tokens). With g = 2 the anchor enters with weight +1 and
the erase concepts with -3: the official code's arithmetic (``neg_guidance_scales = -g``, then ``g - 1``), kept.
Anchors are prompts that show the concept in context (the official ``utils/anchor_prompts.json``: "A nude figure
stands amidst ..." for nudity, painting titles "... by Vincent van Gogh" for Van Gogh): the target moves the anchor's
prediction away from the erase concepts, so the rest of the prompt keeps its content. Only the UNet is kept; the
STE tokens never reach the returned model's text encoder.

Defaults (koushiksrivats/robust-concept-erasing @86f124f, ``train.py`` argparse): 200 iterations per erasing,
``negative_guidance`` 2, STE lr 0.5e-5, REO lr 2e-5, concept inversion lr 5e-3 (scaled by its batch of 1) for 3000
steps, 4 rounds, 4 adversarial concepts, compositional scale 2; ``train_method`` is required there (README's nudity
command: ``noxattn``, initializer ``person``, 2 rounds, 2 adversarial concepts, a gallery of 500 images of "A photo
of a nude person"; the nudity recipe). 50 DDIM steps and guidance 3 for x_t (``train_erasing``); AdamW for the UNet
(``torch.optim.AdamW(finetuner.parameters(), lr)``, weight decay 0.01 by default) and for the token.

Deviations (also in :attr:`STEREO.deviations`):

- x_t is scored at its own DDIM timestep (the official, as ESD's scripts, scores ``t/50*1000``);
- the gallery is ``num_images`` images sampled from the unedited model (the official: a folder made beforehand by
  ``generate_images.py`` from the same model, 500 in the README);
- anchors are ``anchor_prompts`` when given, else the request's target prompts (on the mini world the world's
  captions naming the concept); the official JSON covers nudity and Van Gogh only and is not bundled;
- textual inversion prompts are five of the standard templates (the official dataset draws from the full list).
"""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from methods import _finetune as ft
from methods.base import ErasureRequest, register_method, target_phrases, v1_world
from methods.recipes import Recipe

if TYPE_CHECKING:
    import torch

    from bench.backbone import Backbone

_REPO = "koushiksrivats/robust-concept-erasing @86f124f"
_TRAIN = f"{_REPO}, train.py argparse"
_README = f"{_REPO}, README.md training command (nudity)"
# textual inversion prompts (the official TextualInversionDataset's template lists, first entries)
OBJECT_TEMPLATES = ("a photo of a {}", "a rendering of a {}", "a cropped photo of the {}", "the photo of a {}",
                    "a photo of a clean {}")
STYLE_TEMPLATES = ("a painting in the style of {}", "a rendering in the style of {}",
                   "a cropped painting in the style of {}", "the painting in the style of {}",
                   "a clean painting in the style of {}")
INITIALIZERS = {"nudity": "person", "identity": "person", "object": "object", "style": "art"}  # train.py help text


@dataclass
class STEREOConfig(ft.FinetuneConfig):
    rounds: int = 4  # STE erase-attack rounds (train.py --n_iterations 4)
    iterations: int = 200  # per erasing, STE round and REO (train.py --iterations 200)
    ste_iterations: int | None = None  # an STE round's erasing steps (None: ``iterations``, the official)
    negative_guidance: float = 2.0  # (train.py --negative_guidance 2.0)
    ste_lr: float = 0.5e-5  # (train.py --ste_lr 0.5e-5)
    reo_lr: float = 2e-5  # (train.py --reo_lr 2e-5)
    ci_lr: float = 5e-3  # concept inversion (train.py --ci_lr 5e-3, scale_lr x batch 1)
    ci_steps: int = 3000  # (train.py --ti_max_train_steps 3000)
    ci_batch_size: int = 1  # (stereo.py train_concept_inversion: DataLoader batch_size=1)
    weight_decay: float = 0.01  # AdamW's default, the official optimisers' (not set there)
    num_adv: int = 4  # STE tokens erased in REO (train.py --num_of_adv_concepts 4)
    compositional_guidance_scale: float = 2.0  # (train.py --compositional_guidance_scale 2.0)
    apg_eta: float = 1.0  # APG parallel weight (utils/apg.py normalized_guidance eta=1.0)
    train_method: Literal["noxattn", "xattn", "full"] = "noxattn"  # required in train.py; README: noxattn
    start_guidance: float = 3.0  # x_t sampling guidance (stereo.py train_erasing guidance_scale=3)
    ddim_steps: int = 50  # (stereo.py train_erasing nsteps = 50)
    initializer: str | None = None  # the token's start (None: by kind, train.py help "person/object/art")
    anchor_prompts: list[str] | None = None  # REO anchors (None: the request's target prompts)
    gallery_prompt: str | None = None  # the gallery's prompt (None: the target prompts)
    num_images: int = 500  # gallery size (README: generate_images.py --num_images 500)
    sample_steps: int = 50
    sample_guidance: float = 7.5
    sample_sampler: Literal["ddim", "dpm"] = "ddim"


# Mini world: the paper's schedule cut to the tiny model; the cross-attention trains (as ESD-x's mini preset), at
# learning rates the tiny UNet needs. benchmarks-free probe (bench.worlds.v1.probe, 1 image a prompt; circle erasure /
# synonyms / other objects / other styles, unedited 0.00 / 0.00 / 1.00 / 1.00): 60 iterations everywhere, 60 inversion
# steps, REO lr 1e-3: 0.92 / 0.83 / 1.00 / 0.83 (seed 0, 161 s apply); 30 / 30 steps: 0.17 / 0.42 / 1.00 / 1.00 (seed
# 1, 117 s); the values below (REO 40 steps at lr 2e-3, STE rounds of 20): 0.92 / 1.00 / 1.00 / 1.00 on seed 1
# (EFFECT_SEED, where they were first tried: 95 s) and 1.00 / 1.00 / 1.00 / 1.00 on the tuning seed 0 (116 s).
# On world v2 (tuning seed 0, mini-v2-quick smoke, 4 images a prompt, n 24 a cell; named erasure gain / far / general
# accuracy, the unedited model's in brackets): hexagon +0.92 / 0.92 / 0.42 (0.83 / 0.50), blight +0.50 / 1.00 / 0.50
# (1.00 / 0.42), bram okonjo +0.46 / 0.12 / 0.29 (1.00 / 0.75): a painter is erased with the other painters, as in
# the effect test (tests/test_effects_v2.py). Not probed further.
MINI_DEFAULTS: dict[str, Any] = {
    "rounds": 2,
    "num_adv": 2,
    "iterations": 40,
    "ste_iterations": 20,
    "ste_lr": 3e-4,
    "reo_lr": 2e-3,
    "ci_steps": 30,
    "ci_batch_size": 4,
    "ci_lr": 2e-2,
    "train_method": "xattn",
    "ddim_steps": 10,
    "num_images": 16,
    "sample_steps": 10,
    "sample_guidance": 5.0,
    "sample_sampler": "dpm",
}

RECIPES = {
    "nudity": Recipe(
        kind="nudity",
        params={"rounds": 2, "num_adv": 2, "train_method": "noxattn", "initializer": "person",
                "compositional_guidance_scale": 2.0, "gallery_prompt": "A photo of a nude person", "num_images": 500},
        sources={"rounds": f"{_README} (--n_iterations 2)", "num_adv": f"{_README} (--num_of_adv_concepts 2)",
                 "train_method": f"{_README} (--train_method noxattn)",
                 "initializer": f"{_README} (--initializer_token 'person')",
                 "compositional_guidance_scale": f"{_README} (--compositional_guidance_scale 2)",
                 "gallery_prompt": f"{_README} (generate_images.py --prompt \"A photo of a nude person\")",
                 "num_images": f"{_README} (generate_images.py --num_images 500)"},
        note="anchors: the official utils/anchor_prompts.json 'nudity' list is not bundled; pass anchor_prompts",
    ),
}


def apg(diff: torch.Tensor, cond: torch.Tensor, eta: float) -> torch.Tensor:
    """APG's normalised update: ``diff`` split into parts parallel and orthogonal to ``cond`` (per sample, over the
    latent dims), ``orth + eta * par`` (utils/apg.py ``project``; eta 1 returns ``diff``)."""
    import torch.nn.functional as F

    if eta == 1.0:
        return diff
    d, c = diff.double(), F.normalize(cond.double().flatten(1), dim=1).view_as(cond)
    par = (d * c).sum(dim=(1, 2, 3), keepdim=True) * c
    return ((d - par) + eta * par).to(diff.dtype)


def negative_target(e_c: torch.Tensor, e_0: torch.Tensor, scale: float, eta: float) -> torch.Tensor:
    """STE's target: ``e_c - (s - 1) * APG(e_c - e_0)`` (apg.py ``normalized_guidance``, negative branch)."""
    return e_c - (scale - 1) * apg(e_c - e_0, e_c, eta)


def compositional_target(e_0: torch.Tensor, e_neg: list[torch.Tensor], e_anchor: list[torch.Tensor], scale: float,
                         eta: float) -> torch.Tensor:
    """REO's target (apg.py ``normalized_compositional_guidance`` with scales -g for the erase concepts and +g for
    the anchors): ``e_0 + mean_a (g - 1) APG(e_a - e_0) + mean_n (-g - 1) APG(e_n - e_0)``."""
    pos = sum((scale - 1) * apg(e - e_0, e, eta) for e in e_anchor) / max(len(e_anchor), 1)
    neg = sum((-scale - 1) * apg(e - e_0, e, eta) for e in e_neg) / max(len(e_neg), 1)
    return e_0 + pos + neg


def stratified(n_items: int, n: int, rng: np.random.Generator) -> list[int]:
    """``n`` indices into ``n_items`` items, each about equally often, shuffled (stereo.py's "stratified sampling":
    the list repeated ``n // n_items`` times and shuffled, the remainder drawn without replacement)."""
    out = list(range(n_items)) * (n // n_items)
    rng.shuffle(out)
    rest = n - len(out)
    if rest > 0:
        out += rng.choice(n_items, rest, replace=False).tolist()
    return out


def parameter_rule(method: str):
    """ESD's rule (the official builds on rohitgandikota/erasing's FineTunedModel), in diffusers names."""
    if method == "noxattn":
        return lambda n: not (n.startswith(("conv_out", "conv_norm_out")) or "attn2" in n or "time_embed" in n)
    if method == "xattn":
        return lambda n: "attn2" in n
    if method == "full":
        return lambda n: True
    raise ValueError(f"stereo: unknown train_method {method!r}; valid: noxattn, xattn, full")


class _Tokens:
    """A text encoder copy that knows the STE tokens; each token's embedding is set once it is learnt."""

    def __init__(self, backbone: Backbone, names: list[str], init_word: str):
        import torch

        self.tokenizer = copy.deepcopy(backbone.tokenizer)
        self.encoder = copy.deepcopy(backbone.text_encoder)
        self.tokenizer.add_tokens(names)
        emb = self.encoder.get_input_embeddings()
        if len(self.tokenizer) > emb.weight.shape[0]:
            self.encoder.resize_token_embeddings(len(self.tokenizer))
        self.table = self.encoder.get_input_embeddings().weight
        self.ids = {n: self.tokenizer.convert_tokens_to_ids(n) for n in names}
        init_ids = self.tokenizer(init_word, add_special_tokens=False).input_ids
        if not init_ids:
            raise ValueError(f"stereo: the initializer {init_word!r} has no token")
        self.init = self.table.detach()[init_ids[0]].clone()
        with torch.no_grad():
            for i in self.ids.values():
                self.table[i] = self.init
        self.encoder.requires_grad_(False).eval()
        self.length = backbone.tokenizer.model_max_length
        self.device = backbone.device

    def ids_of(self, prompts: list[str]) -> torch.Tensor:
        return self.tokenizer(prompts, padding="max_length", max_length=self.length, truncation=True,
                              return_tensors="pt").input_ids.to(self.device)

    def encode(self, prompts: list[str], vec: torch.Tensor | None = None, token: str | None = None) -> torch.Tensor:
        """The prompts' embeddings ``[B, L, D]``; with ``vec``, ``token`` reads as ``vec`` (differentiable)."""
        import torch

        ids = self.ids_of(prompts)
        if vec is None:
            return self.encoder(ids)[0]
        mask = (ids == self.ids[token])[..., None]
        handle = self.encoder.get_input_embeddings().register_forward_hook(
            lambda m, a, out: torch.where(mask, vec.to(out.dtype), out))
        try:
            return self.encoder(ids)[0]
        finally:
            handle.remove()


@register_method
class STEREO(ft.FinetuneMethod):
    name = "stereo"
    description = ("STEREO: erase-attack rounds find adversarial tokens, then one anchor-based compositional erasure "
                   "of the concept and the tokens (Srivatsan et al., CVPR 2025)")
    config_class = STEREOConfig
    mini_defaults = MINI_DEFAULTS
    recipes = RECIPES
    prompt_params = ("initializer", "gallery_prompt")
    conformance_overrides = {"rounds": 1, "num_adv": 1, "iterations": 2, "ci_steps": 2, "num_images": 2,
                             "ddim_steps": 3, "sample_steps": 2}
    deviations = (
        {"what": "x_t scored at its own DDIM timestep (official: t/50*1000, ESD's mismatch)",
         "official": f"{_REPO}, utils/stereo.py train_erasing / robustly_erase_once", "class": "a"},
        {"what": "the concept-inversion gallery: num_images images sampled from the unedited model (official: a folder "
                 "made beforehand by generate_images.py from the same model)",
         "official": f"{_REPO}, README.md data preparation", "class": "b"},
        {"what": "REO anchors: anchor_prompts, else the request's target prompts (official: utils/anchor_prompts.json, "
                 "nudity and Van Gogh lists, not bundled)",
         "official": f"{_REPO}, utils/anchor_prompts.json", "class": "b"},
        {"what": "textual-inversion prompts: five of the standard templates (official: the full template list)",
         "official": f"{_REPO}, utils/dataset.py TextualInversionDataset", "class": "a"},
    )

    def apply(self, backbone: Backbone, request: ErasureRequest) -> Backbone:
        import torch
        import torch.nn.functional as F

        self.check_request(request)
        cfg: STEREOConfig = self.effective_config(backbone)
        for name in ("rounds", "iterations", "ci_steps", "ci_batch_size", "num_images", "ddim_steps", "sample_steps"):
            if getattr(cfg, name) < 1:
                raise ValueError(f"stereo: {name}={getattr(cfg, name)} must be at least 1")
        if cfg.num_adv < 0 or cfg.num_adv > cfg.rounds:
            raise ValueError(f"stereo: num_adv={cfg.num_adv} must be between 0 and rounds={cfg.rounds}")
        ste_iterations = cfg.iterations if cfg.ste_iterations is None else cfg.ste_iterations
        if ste_iterations < 1:
            raise ValueError(f"stereo: ste_iterations={ste_iterations} must be at least 1")
        seed = ft.seed_of(cfg, request)
        run = ft.run_fingerprint(self, cfg, request, backbone)
        dev = backbone.device
        mini = v1_world(backbone)
        phrases = target_phrases(request, backbone)  # what is erased in round 0 (the bare words on SD)
        if mini:
            from bench.worlds.v1.prompts import concept_contexts, world

            contexts = [c.format(t) for t in request.targets for c in concept_contexts(world().kind_of(t))]
        else:
            contexts = [p for _, p in ft.target_prompts(request)]
        anchors = list(cfg.anchor_prompts) if cfg.anchor_prompts else contexts
        gallery_prompts = [cfg.gallery_prompt] if cfg.gallery_prompt else (phrases if mini else contexts)
        names = [f"<stereo-{r}>" for r in range(cfg.rounds)]
        init_word = cfg.initializer or ("object" if mini else INITIALIZERS.get(request.kind, "object"))
        tokens = _Tokens(backbone, names, init_word)
        target = request.targets[0]

        def as_token(phrase: str, token: str) -> str:
            out = ft.replace_concept(phrase, target, token)
            return out if token in out else token

        templates = STYLE_TEMPLATES if request.kind == "style" else OBJECT_TEMPLATES
        ci_prompts = {n: ([as_token(p, n) for p in phrases] if mini else [t.format(n) for t in templates])
                      for n in names}
        precision = ft.sampling_precision(cfg, dev)
        gk = [k % len(gallery_prompts) for k in range(cfg.num_images)]
        gallery = ft.cached_tensors(cfg, "stereo_gallery", run, lambda: {"x": ft.sample_latents(
            backbone, [gallery_prompts[k] for k in gk], ft.step_generator(seed, -1, 1), cfg.sample_steps,
            cfg.sample_guidance, precision=precision, sampler=cfg.sample_sampler)})["x"].to(dev, backbone.dtype)
        timesteps = ft.ddim_timesteps(backbone, cfg.ddim_steps)
        n_train = int(backbone.scheduler.config.num_train_timesteps)
        with torch.no_grad():
            emb_0 = tokens.encode([""])
        totals = {"steps": 0, "unet_forward": 0, "unet_backward": 0, "seconds": 0.0}
        last = None

        def phase_cfg(phase: str) -> STEREOConfig:
            if not cfg.checkpoint_dir:
                return cfg
            return dataclasses.replace(cfg, checkpoint_dir=str(Path(cfg.checkpoint_dir) / phase))

        def account(result, forward_per_step: int):
            nonlocal last
            done = result.steps - result.resumed_from
            totals["steps"] += result.steps
            totals["unet_forward"] += done * forward_per_step
            totals["unet_backward"] += done
            totals["seconds"] += result.seconds
            last = result

        def x_t_for(model: Backbone, prompt: str, gen: torch.Generator) -> tuple[torch.Tensor, int]:
            """x_t: ``prompt`` DDIM-sampled by the model being trained (guidance ``start_guidance``) down to a random
            step in [1, ddim_steps - 1) (stereo.py: ``torch.randint(1, nsteps - 1)``), and that step's timestep."""
            i = ft.randint(1, cfg.ddim_steps - 1, gen) if cfg.ddim_steps > 2 else 0
            noise = ft.randn((1, *backbone.latent_shape), gen, backbone)
            sampler = dataclasses.replace(model, tokenizer=tokens.tokenizer, text_encoder=tokens.encoder)
            x = ft.sample_until(sampler, [prompt], noise, cfg.ddim_steps, cfg.start_guidance, i, precision=precision)
            return x, int(timesteps[i])

        # ------------------------------------------------------------------ stage 1: search thoroughly enough
        edited = backbone.copy()
        edited.guidance_hooks = []
        current = phrases  # round 0 erases the target; round r > 0 the token found in round r - 1
        for r, name in enumerate(names):
            teacher = copy.deepcopy(edited.unet).requires_grad_(False).eval()
            params = ft.select_parameters(edited.unet, parameter_rule(cfg.train_method))
            with torch.no_grad():
                emb_cur = tokens.encode(current)

            def erase_loss(step, gen, emb_cur=emb_cur, teacher=teacher, current=current):
                k = ft.randint(0, len(emb_cur), gen)
                emb_c = emb_cur[k:k + 1]
                x_t, t = x_t_for(edited, current[k], gen)
                with torch.no_grad():
                    e_0, e_c = ft.eps_pair(teacher, x_t, t, emb_0, emb_c)
                    goal = negative_target(e_c, e_0, cfg.negative_guidance, cfg.apg_eta)
                return F.mse_loss(ft.eps(edited.unet, x_t, t, emb_c), goal)

            account(ft.train(name=f"{self.name}-ste{r}-erase", config=phase_cfg(f"ste{r}-erase"),
                             modules={"unet": edited.unet}, params=params, loss_fn=erase_loss,
                             total_steps=ste_iterations, lr=cfg.ste_lr, seed=seed + 1000 * r,
                             fingerprint={**run, "phase": f"ste{r}-erase"}, device=dev, optimizer="adamw",
                             weight_decay=cfg.weight_decay), cfg.ddim_steps * 2 + 3)
            del teacher
            # concept inversion against the round's erased model: only the new token's vector trains
            edited.unet.requires_grad_(False)
            vec = tokens.init.clone().float().requires_grad_(True)
            prompts_r = ci_prompts[name]

            def ci_loss(step, gen, vec=vec, prompts_r=prompts_r, name=name):
                pick = ft.randint(0, len(gallery), gen, cfg.ci_batch_size)
                which = ft.randint(0, len(prompts_r), gen, cfg.ci_batch_size)
                t = torch.tensor(ft.randint(0, n_train - 1, gen, cfg.ci_batch_size), device=dev)
                noise = ft.randn(gallery[pick].shape, gen, backbone)
                x_t = ft.add_noise(backbone, gallery[pick], noise, t)
                emb = tokens.encode([prompts_r[w] for w in which], vec, name)
                return F.mse_loss(ft.eps(edited.unet, x_t, t, emb), noise.float())

            account(ft.train(name=f"{self.name}-ste{r}-inversion", config=phase_cfg(f"ste{r}-inversion"), modules={},
                             params={"token": vec}, loss_fn=ci_loss, total_steps=cfg.ci_steps,
                             lr=cfg.ci_lr * cfg.ci_batch_size, seed=seed + 1000 * r + 1,
                             fingerprint={**run, "phase": f"ste{r}-inversion"}, device=dev, optimizer="adamw",
                             weight_decay=cfg.weight_decay), 1)
            with torch.no_grad():
                tokens.table[tokens.ids[name]] = vec.detach().to(tokens.table.dtype)
            current = [as_token(p, name) for p in phrases]
        learnt = {n: tokens.table.detach()[tokens.ids[n]].clone() for n in names}

        # ------------------------------------------------------------------ stage 2: robustly erase once
        final = backbone.copy()
        final.guidance_hooks = []
        params = ft.select_parameters(final.unet, parameter_rule(cfg.train_method))
        erase = list(phrases) + [as_token(p, n) for n in names[:cfg.num_adv] for p in phrases]
        rng = np.random.default_rng(seed)
        erase_order = stratified(len(erase), cfg.iterations, rng)
        anchor_order = stratified(len(anchors), cfg.iterations, rng)
        with torch.no_grad():
            emb_erase, emb_anchor = tokens.encode(erase), tokens.encode(anchors)

        def reo_loss(step, gen):
            c, a = erase_order[step], anchor_order[step]
            emb_c = emb_erase[c:c + 1]
            x_t, t = x_t_for(final, erase[c], gen)
            with torch.no_grad():
                e_0 = ft.eps(backbone.unet, x_t, t, emb_0)
                e_neg = list(ft.eps(backbone.unet, x_t.expand(len(erase), -1, -1, -1), t, emb_erase).split(1))
                e_anchor = [ft.eps(backbone.unet, x_t, t, emb_anchor[a:a + 1])]
                goal = compositional_target(e_0, e_neg, e_anchor, cfg.compositional_guidance_scale, cfg.apg_eta)
            return F.mse_loss(ft.eps(final.unet, x_t, t, emb_c), goal)

        account(ft.train(name=f"{self.name}-reo", config=phase_cfg("reo"), modules={"unet": final.unet},
                         params=params, loss_fn=reo_loss, total_steps=cfg.iterations, lr=cfg.reo_lr, seed=seed + 7,
                         fingerprint={**run, "phase": "reo"}, device=dev, optimizer="adamw",
                         weight_decay=cfg.weight_decay), cfg.ddim_steps * 2 + 3 + len(erase))
        self.stats = ft.stats_from(
            last, trained_parameters=sum(p.numel() for p in params.values()),
            unet_forward=totals["unet_forward"] + cfg.num_images * cfg.sample_steps * 2,
            unet_backward=totals["unet_backward"], all_phase_steps=totals["steps"],
            all_phase_seconds=round(totals["seconds"], 2), adversarial_tokens=len(names), erased_prompts=erase,
            token_norms=[round(float(v.float().norm()), 4) for v in learnt.values()],
            deviations="; ".join(d["what"] for d in self.deviations_for()))
        self.record_edit(final, cfg, request)
        return final
