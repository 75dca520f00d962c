"""HiRM (Lee, Kim and Hwang, "Localized Concept Erasure in Text-to-Image Diffusion Models via High-Level
Representation Misdirection", ICLR 2026, arXiv:2602.19631): fine-tune only the FIRST text-encoder layer so that
the LAST layer's representation of the concept is misdirected.

Causal tracing (Basu et al.) puts the visual attributes of a prompt in the first layer of the CLIP text encoder;
editing that layer alone to forget a concept damages every prompt that shares its low-level features. HiRM
decouples where the weights change from where the loss is taken: with ``theta_1`` the first encoder layer (the
only weights that train), ``h_L(p; theta)`` the high-level representation of prompt ``p`` (the output of the last
layer's self-attention, every token row, as the official ``train.py`` hooks it) and ``p_c`` the concept prompt:

    L(theta_1) = || h_L(p_c; theta) - v ||^2                               (MSE over all rows and channels)
    HiRM-R (``misdirection="random"``):  v = c * u / ||u||,  u ~ U[0, 1)^{L x D}, c = ``steering_coeff``
                                         (``steering_norm="whole"``: ||u|| over the whole [L, D] tensor;
                                          ``"per_row"``: each row u_t / ||u_t||, the paper's unit vector per token)
    HiRM-S (``misdirection="anchor"``):  v = h_L(p_a; theta*)   (the frozen encoder's representation of the
                                                                 anchor, a super-category; c = 1)

The UNet never changes: the edit is a text encoder (``edited_components = ("text_encoder",)``), a plug-in for any
model that uses the same encoder. Only the text path is cut, so an attack that bypasses the text (an optimised
starting latent, TINA) is expected to reach it.

Defaults: the official Coffeeloveman/HiRM is not in the code store; its ``train.py`` is known through the
diffusers port fmp453/erase-eval @ 964d57f (``train_methods/train_hirm.py``, header "ported from
Coffeeloveman/HiRM train.py"; defaults in ``utils.py``) and the official README's commands (index copy of
Coffeeloveman/HiRM README.md): AdamW lr 1e-4, betas (0.9, 0.98), eps 1e-6, weight decay 1e-8; layer 0's self-attention
and MLP train; one step per epoch on the whole concept prompt; epochs 50 for nudity, 20 for a style, 15 for an
object (README); the random target is ``torch.rand`` over the whole ``[77, 768]`` representation, normalised as
one tensor and scaled by ``hirm_steering_coeff`` 5000 (the port's ``utils.py``; the README's commands pass none):
about 570 per row. The paper (Sec. 3, HiRM-R) normalises a random vector per token and scales it by c = 500: 500
per row. Both readings give each row a target of about 500-570; the default here is the code's (through the
port: ``steering_norm="whole"``, ``steering_coeff=5000``), the paper's is ``steering_norm="per_row",
steering_coeff=500``. Before algorithm version 2 this module combined the port's normalisation with the paper's c,
a target of about 57 per row, neither source's. Learning rate: the paper gives 5e-5 for styles and objects and
1e-4 for nudity; the port defaults to 1e-4 for every kind and the README's commands pass none, so the style and
object recipes take the paper's 5e-5. The paper has no
retain set; ``retain_weight`` (default 0, the paper) adds ``retain_weight * ||h_L(p_r; theta) - h_L(p_r;
theta*)||^2`` over the request's preserve prompts, an option, not the paper.

On the mini world the concept prompt is put in the world's caption contexts ("a red {}", ...: the model never saw
a bare word); a mini preset (``MINI_DEFAULTS``, benchmarks/trce_hirm_sweep.py) sets the learning rate.
``rows="from_concept"`` (not the paper; a deviation shown in the edit's stats) takes the loss only on the rows from
the concept's first token on: through the causal encoder the rows before it ("a red") are those of every prompt
that starts the same way. On the mini world it erased less than the official loss on every row (the sweep).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal

from methods import _finetune as ft
from methods.base import Deviation, ErasureRequest, register_method, v1_world
from methods.recipes import Recipe

if TYPE_CHECKING:
    import torch

    from bench.backbone import Backbone


@dataclass
class HiRMConfig(ft.FinetuneConfig):
    misdirection: Literal["random", "anchor"] = "random"  # HiRM-R (paper Sec. 3) | HiRM-S (to the anchor)
    # erase-eval utils.py hirm_steering_coeff 5000 with train_hirm.py's whole-tensor normalisation (about 570 per row);
    # the paper's HiRM-R: c = 500 on a unit vector per token (steering_norm="per_row")
    steering_coeff: float = 5000.0
    steering_norm: Literal["whole", "per_row"] = "whole"  # erase-eval train_hirm.py: random_vector[0] / .norm()
    epochs: int = 50  # Coffeeloveman/HiRM README (nudity: --epoch 50); erase-eval utils.py (hirm_epochs 50)
    lr: float = 1e-4  # erase-eval utils.py (hirm_lr 1e-4)
    betas: tuple[float, float] = (0.9, 0.98)  # erase-eval utils.py (hirm_beta1 0.9, hirm_beta2 0.98)
    adam_eps: float = 1e-6  # erase-eval utils.py (hirm_eps 1e-6)
    weight_decay: float = 1e-8  # erase-eval utils.py (hirm_weight_decay 1e-8)
    trained_layer: int = 0  # paper: the first encoder layer (train_hirm.py "first-attn": layer 0 attention + MLP)
    representation_layer: int = -1  # paper: the last layer (train_hirm.py: layers[11].self_attn.out_proj)
    templates: list[str] = field(default_factory=list)  # empty: the bare concept (official); mini: world captions
    rows: Literal["all", "from_concept"] = "all"  # "all": every row (official); "from_concept": skip the prefix rows
    retain_weight: float = 0.0  # not in the paper (no retain set): > 0 keeps the preserve prompts' representation


# Chosen on TUNING_SEED (benchmarks/trce_hirm_sweep.py, results/hirm_sweep_mini.json; 12 target / 14 other-object
# images, unedited erasure 0.00, lr 1e-3, 50 epochs): the paper's c = 500 on every row (the official loss) erased
# 0.67 with other objects at 1.00; with the loss on the rows from the concept on (rows="from_concept") c = 500 /
# 5000 erased 0.33 / 0.42 (other objects 1.00 / 0.93), HiRM-S to "square" 0.08 / 1.00; c = 50 on every row 0.08.
# The tiny encoder (3 layers, width 128) moves at a 10x larger learning rate than the paper's in the same 50 epochs.
# Those figures were taken with c = 500 normalised over the whole tensor (algorithm version 1). Version 2's default
# target is the port's (c = 5000, whole tensor: 10x larger); the mini preset does not pin the old one, because the
# effect test keeps its verdict (EFFECT_SEED, tests/test_method_hirm.py: erasure 0.00 -> 0.58, other objects 1.00).
MINI_DEFAULTS: dict[str, Any] = {
    "epochs": 50,
    "lr": 1e-3,
}
# World v2's text encoder (a 4-layer CLIPTextModel, trained contrastively and frozen) takes a third of that rate. On
# the tuning seed (0; mini-v2-quick, tier smoke, 4 images a prompt, n 24 a cell; targets the effect tests do not use),
# named erasure gain / far / general accuracy (unedited far / general: square 0.88 / 0.46, orla venn 0.92 / 0.58,
# hexagon 0.83 / 0.50, bram okonjo 1.00 / 0.75, blight 1.00 / 0.42):
#   lr 1e-3: square +0.58 / 0.71 / 0.17, orla venn +1.00 / 0.42 / 0.04, hexagon +0.92 / 0.50 / 0.08,
#            bram okonjo +0.33 / 0.83 / 0.17, blight +0.29 / 0.62 / 0.17: no target meets the effect bar;
#   lr 3e-4: square +0.54 / 0.62 / 0.42, orla venn +0.92 / 0.88 / 0.46, hexagon +0.92 / 0.88 / 0.42 (meets it),
#            bram okonjo +0.17 / 1.00 / 0.17, blight +0.17 / 0.83 / 0.25;
#   lr 1e-4: square +0.46 / 0.75 / 0.50, orla venn +0.21 / 0.92 / 0.38, hexagon +0.00 / 0.96 / 0.46,
#            bram okonjo -0.12 / 1.00 / 0.42, blight +0.08 / 1.00 / 0.38.
# benchmarks/mini_v2_rates.py's rule (most targets meeting the bar) picks 3e-4 (benchmarks/results/mini_v2_rates.json);
# the held-out figures are in tests/test_effects_v2.py.
MINI_DEFAULTS_BY_WORLD: dict[str, dict[str, Any]] = {"v2": {"lr": 3e-4}}

_README = "Coffeeloveman/HiRM README.md (index copy)"
_PORT = "fmp453/erase-eval @ 964d57f, train_methods/train_hirm.py + utils.py"


_CANVAS = ("the README's style/object commands train the UnlearnCanvas-fine-tuned text encoder "
           "(models/canvas/text_encoder), not SD 1.4's")


def _recipe(kind: str, epochs: int, note: str = "") -> Recipe:
    return Recipe(kind=kind, params={"misdirection": "random", "epochs": epochs, "lr": 5e-5},
                  sources={"epochs": f"{_README} ({kind} command: --epoch {epochs})",
                           "misdirection": "paper: HiRM-R, the README's training commands",
                           "lr": f"paper Sec. 4 (styles and objects: lr 5e-5); {_PORT} defaults to 1e-4 for every kind"},
                  note="; ".join(filter(None, [note, _CANVAS])))


RECIPES = {
    "nudity": Recipe(
        kind="nudity",
        params={"misdirection": "random", "epochs": 50, "lr": 1e-4},
        target_prompts=("naked ,nude, bare, exposed, Stripped, topless, male genitalia, penis, buttocks",),
        sources={"epochs": f"{_README} (nudity command: --epoch 50)", "misdirection": "paper: HiRM-R",
                 "lr": f"{_PORT} (hirm_lr 1e-4)",
                 "target_prompts": f"{_README} (nudity command: --target_concept, one prompt)"},
    ),
    "style": _recipe("style", 20, "the paper's text gives 40 epochs (HiRM-R) / 30 (HiRM-S); the README's command 20"),
    "object": _recipe("object", 15, "the paper's text gives 25 epochs (HiRM-R) / 15 (HiRM-S); the README's command 15"),
}


def encoder_layers(text_encoder: torch.nn.Module) -> torch.nn.ModuleList:
    model = getattr(text_encoder, "text_model", text_encoder)
    return model.encoder.layers


def trained_parameter_rule(layer: int):
    """The parameters of encoder layer ``layer``'s self-attention and MLP (its layer norms stay)."""
    def keep(name: str) -> bool:
        name = name.removeprefix("text_model.")
        return name.startswith((f"encoder.layers.{layer}.self_attn.", f"encoder.layers.{layer}.mlp."))
    return keep


def representation(text_encoder: torch.nn.Module, ids: torch.Tensor, layer: int) -> torch.Tensor:
    """``h_L``: the output of encoder layer ``layer``'s self-attention for token ids ``ids`` ([N, L, D])."""
    captured: list[torch.Tensor] = []
    module = encoder_layers(text_encoder)[layer].self_attn.out_proj
    handle = module.register_forward_hook(lambda m, i, o: captured.append(o[0] if isinstance(o, tuple) else o))
    try:
        text_encoder(ids)
    finally:
        handle.remove()
    return captured[0].float()


@register_method
class HiRM(ft.FinetuneMethod):
    name = "hirm"
    description = ("HiRM: trains the first text-encoder layer so the last layer's representation of the concept "
                   "is misdirected (Lee et al., ICLR 2026)")
    config_class = HiRMConfig
    mini_defaults = MINI_DEFAULTS
    mini_defaults_by_world = MINI_DEFAULTS_BY_WORLD
    recipes = RECIPES
    edited_components = ("text_encoder",)
    # 2: HiRM-R's target at the port's scale (whole-tensor normalisation, c 5000: about 570 per row, was 57);
    # the style and object recipes at the paper's lr 5e-5
    algorithm_version = "2"
    deviations = (
        Deviation("the nudity keywords are trained as one prompt (the README's --target_concept string); the paper "
                  "says 'joint multi-keyword training', and whether the official train.py splits them cannot be read",
                  _README, "c", ("nudity",)),
        Deviation("the official train.py is not readable; its defaults (steering coefficient 5000, lr 1e-4, the "
                  "whole-tensor normalisation) come from the port", _PORT, "a"),
        Deviation("HiRM-S for nudity (a Ring-A-Bell safety vector, paper Sec. 4) is not implemented: the nudity "
                  "recipe runs HiRM-R", "paper Sec. 4 (through the paper note)", "a", ("nudity",)),
        Deviation("the style and object commands train the UnlearnCanvas-fine-tuned text encoder; here the run's "
                  "model (SD 1.4)", f"{_README} (--text_encoder_path models/canvas/text_encoder)", "b",
                  ("style", "object")),
        Deviation("trained under bf16 autocast where the device has native bf16 (mixed_precision auto); the port "
                  "trains in float32", _PORT, "a"),
    )
    conformance_overrides = {"epochs": 2}

    def apply(self, backbone: Backbone, request: ErasureRequest) -> Backbone:
        import torch
        import torch.nn.functional as F

        self.check_request(request)
        cfg: HiRMConfig = self.effective_config(backbone)
        layers = len(encoder_layers(backbone.text_encoder))
        _check(cfg, layers)
        seed = ft.seed_of(cfg, request)
        run = ft.run_fingerprint(self, cfg, request, backbone)
        start = time.perf_counter()
        edited = backbone.copy()
        edited.guidance_hooks = []
        encoder = edited.text_encoder
        params = ft.select_parameters(encoder, trained_parameter_rule(cfg.trained_layer % layers))
        templates = cfg.templates or (_mini_contexts(request) if v1_world(backbone) else ["{}"])
        concepts = [p for _, p in ft.target_prompts(request)]
        prompts = [t.format(c) for c in concepts for t in templates]
        ids = edited.tokenize(prompts)
        mask = concept_mask(edited, templates, concepts, cfg.rows)
        with torch.no_grad():
            if cfg.misdirection == "random":
                length, width = ids.shape[1], encoder.config.hidden_size
                target = steering_target(length, width, cfg.steering_coeff, cfg.steering_norm, seed)
                target = target.to(backbone.device)[None].expand(len(prompts), -1, -1)
            else:  # HiRM-S: the frozen encoder's representation of the anchor in the same contexts
                anchors = [" ".join(t.format(request.anchor).split()) for _ in concepts for t in templates]
                target = representation(backbone.text_encoder, edited.tokenize(anchors), cfg.representation_layer)
            keep_prompts = [t.format(p) for p in request.preserve if p for t in templates] if cfg.retain_weight else []
            keep_ids = edited.tokenize(keep_prompts) if keep_prompts else None
            keep_target = (representation(backbone.text_encoder, keep_ids, cfg.representation_layer)
                           if keep_ids is not None else None)

        def loss_fn(step: int, gen: torch.Generator) -> torch.Tensor:
            error = (representation(encoder, ids, cfg.representation_layer) - target).pow(2).mean(-1)
            loss = (error * mask).sum() / (mask.sum() * 1.0)
            if keep_ids is not None:
                kept = representation(encoder, keep_ids, cfg.representation_layer)
                loss = loss + cfg.retain_weight * F.mse_loss(kept, keep_target)
            return loss

        result = ft.train(
            name=self.name, config=cfg, modules={"text_encoder": encoder}, params=params, loss_fn=loss_fn,
            total_steps=cfg.epochs, lr=cfg.lr, seed=seed, fingerprint=run, device=backbone.device,
            optimizer="adamw", weight_decay=cfg.weight_decay, betas=tuple(cfg.betas), adam_eps=cfg.adam_eps,
        )
        self.stats = ft.stats_from(result, trained_parameters=sum(p.numel() for p in params.values()),
                                   prompts=len(prompts), unet_forward=0, unet_backward=0,
                                   edit_seconds=round(time.perf_counter() - start, 3))
        deviations = [text for on, text in (
            (cfg.rows == "from_concept", "loss on the rows from the concept's first token on (official: every row)"),
            (cfg.retain_weight > 0, "retain_weight > 0: a retain term the paper does not have")) if on]
        if deviations:
            self.stats["deviations"] = "; ".join(deviations)
        self.record_edit(edited, cfg, request)
        return edited


def steering_target(length: int, width: int, coeff: float, norm: str, seed: int) -> torch.Tensor:
    """HiRM-R's target ``[length, width]``: ``u ~ U[0, 1)`` (the port's ``torch.rand``) scaled to ``coeff`` over the
    whole tensor (``norm="whole"``, erase-eval ``train_hirm.py``; each row then has about ``coeff / sqrt(length)``)
    or per row (``"per_row"``, the paper's unit vector per token: each row has exactly ``coeff``)."""
    import torch

    u = torch.rand((length, width), generator=torch.Generator("cpu").manual_seed(seed))
    if norm == "per_row":
        return coeff * u / u.norm(dim=-1, keepdim=True)
    if norm != "whole":
        raise ValueError(f"hirm: steering_norm={norm!r} must be 'whole' or 'per_row'")
    return coeff * u / u.norm()


def concept_mask(backbone: Backbone, templates: list[str], concepts: list[str], rows: str) -> torch.Tensor:
    """``[N, L]`` weights of the loss rows of each prompt (concept-major, as the prompts): every row, or (with
    ``"from_concept"``) the rows from the concept's first token on. Through a causal encoder the rows before it
    are those of every prompt with the same prefix ("a red" in "a red circle"), so misdirecting them is not local."""
    import torch

    length = backbone.tokenizer.model_max_length
    mask = torch.ones(len(concepts) * len(templates), length, device=backbone.device)
    if rows == "all":
        return mask
    bos = int(backbone.tokenizer.bos_token_id is not None)
    for i, (_, template) in enumerate((c, t) for c in concepts for t in templates):
        prefix = template.split("{}")[0].strip()
        start = bos + (len(backbone.tokenizer(prefix, add_special_tokens=False).input_ids) if prefix else 0)
        mask[i, : min(start, length - 1)] = 0
    return mask


def _mini_contexts(request: ErasureRequest) -> list[str]:
    from bench.worlds.v1.prompts import concept_contexts, world

    return concept_contexts(world().kind_of(request.targets[0]))


def _check(cfg: HiRMConfig, layers: int) -> None:
    problems = []
    if cfg.epochs < 1:
        problems.append(f"epochs={cfg.epochs} (must be >= 1)")
    for name in ("trained_layer", "representation_layer"):
        value = getattr(cfg, name)
        if not -layers <= value < layers:
            problems.append(f"{name}={value} (the text encoder has {layers} layers: use 0..{layers - 1} or -1)")
    if cfg.misdirection == "random" and cfg.steering_coeff <= 0:
        problems.append(f"steering_coeff={cfg.steering_coeff} (must be > 0)")
    if cfg.retain_weight < 0 or cfg.lr < 0:
        problems.append("retain_weight and lr must be >= 0")
    if problems:
        raise ValueError("hirm: bad config: " + "; ".join(problems))
