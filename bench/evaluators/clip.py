"""``clip``: open_clip zero-shot classification and CLIP score.

Params:
- ``model``: an open_clip model config name (default ``ViT-B-32``), or ``model_config``: a config
  dict (or a JSON file) for a model open_clip does not list (tests use a tiny one);
- ``pretrained``: the open_clip pretrained tag (``openai``, ``laion2b_s34b_b79k``...): without a
  local file, open_clip's own download fetches it into the Hugging Face cache
  (:mod:`bench.evaluators.weights`); recorded in the provenance;
- ``weights``: the checkpoint file (``.safetensors`` preferred; ``.bin``/``.pth`` are read with
  ``weights_only``) or a folder holding it (an HF snapshot folder works); default: found under
  ``$ERASEBENCH_WEIGHTS`` (``~/.cache/erasebench/weights``), else the tag's file;
- ``scale``: CLIP score = ``scale * cos(image, prompt)``; 100 (default) gives the usual ~31 for
  ViT-B/32 (MACE, WhenAreConceptsErased), 1 the raw cosine ~0.31 (AdvUnlearn's "/100");
- zero-shot: ``classes`` (a list, or ``{label_space: list}``) or the item column
  ``label_choices`` ("a|b|c"); ``templates`` (a list of "...{}..." strings, or
  ``{label_space: list}``); the item's ``label`` is the expected class, ``erase_target`` the
  erased one (added to the label space when missing).

Record columns: ``clip_score``, ``clip_cosine`` (always, against the item's prompt); with a label
space: ``clip_pred``, ``correct`` (pred == label), ``target_present`` (pred == erased target).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

import bench.prompts  # name matching shared with the prompt sources
from bench.evaluators.base import Evaluator, register_evaluator, sha256_file
from bench.evaluators.weights import WeightsNotFoundError, find_file, open_clip_source, weights_root

DEFAULT_TEMPLATES = ["a photo of a {}."]
CLIP_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors", "open_clip_pytorch_model.bin",
              "open_clip_model.bin")
_SHA_CACHE: dict[tuple[str, float, int], str] = {}


# --------------------------------------------------------------------------- shared helpers
__all__ = ["CLIPEvaluator", "WeightsNotFoundError", "file_sha256", "load_state_dict", "locate_weights", "weights_root"]


def locate_weights(value: str | Path | None, filenames: tuple[str, ...], evaluator: str, hint: str = "") -> Path:
    """A weight file: ``value`` itself when it is a file, else the first of ``filenames`` found in
    the folder ``value`` (or ``$ERASEBENCH_WEIGHTS``), searched recursively. Raises
    :class:`WeightsNotFoundError` naming the file it needs."""
    if value is not None:
        p = Path(value).expanduser()
        if p.is_file():
            return p
        folder = p
    else:
        folder = weights_root()
    found = find_file(folder, filenames)
    if found is not None:
        return found
    where = f"{folder}" if folder.exists() or value is not None else f"{folder} (does not exist)"
    raise WeightsNotFoundError(
        f"{evaluator}: weight file {filenames[0]} not found in {where}; set the evaluator param 'weights' to the "
        f"file or its folder, or put it under $ERASEBENCH_WEIGHTS{'; ' + hint if hint else ''}"
    )


def file_sha256(path: str | Path) -> str:
    p = Path(path)
    st = p.stat()
    key = (str(p.resolve()), st.st_mtime, st.st_size)
    if key not in _SHA_CACHE:
        _SHA_CACHE[key] = sha256_file(p)
    return _SHA_CACHE[key]


def load_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """safetensors, or a pickled state dict read with ``weights_only=True`` (never runs code)."""
    path = str(path)
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path, device="cpu")
    sd = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict", "model"):
        if isinstance(sd, dict) and key in sd and isinstance(sd[key], dict):
            sd = sd[key]
    return sd


def resize_center_crop(images: torch.Tensor, size: int, mode: str = "bicubic", resize_to: int | None = None) -> torch.Tensor:
    """Resize the short side to ``resize_to`` (default ``size``) with antialiasing, then centre-crop ``size``."""
    short = resize_to or size
    h, w = images.shape[-2:]
    scale = short / min(h, w)
    nh, nw = max(short, round(h * scale)), max(short, round(w * scale))
    if (nh, nw) != (h, w):
        images = F.interpolate(images, size=(nh, nw), mode=mode, align_corners=False, antialias=True)
    top, left = (nh - size) // 2, (nw - size) // 2
    return images[..., top : top + size, left : left + size].clamp(0, 1)


norm_name = bench.prompts.norm_name
match_name = bench.prompts.match_name


# --------------------------------------------------------------------------- evaluator
@register_evaluator
class CLIPEvaluator(Evaluator):
    name = "clip"
    description = "open_clip zero-shot classifier (target_present/correct) and CLIP score (open_clip pretrained tags)"

    def __init__(self, device="cpu", model: str = "ViT-B-32", pretrained: str = "openai", weights: str | None = None,
                 model_config: dict | str | None = None, scale: float = 100.0, classes: Any = None,
                 templates: Any = None, batch_size: int = 64, **params: Any):
        super().__init__(device, model=model, pretrained=pretrained, weights=weights, scale=scale, **params)
        import open_clip

        self.model_name, self.pretrained, self.scale = model, pretrained, float(scale)
        self.classes, self.templates, self.batch_size = classes, templates, int(batch_size)
        if model_config is None and open_clip.get_pretrained_cfg(model, pretrained):
            # a listed model and tag: a local file, else open_clip's own download into the HF cache
            self.weights_path = open_clip_source(model, pretrained, CLIP_FILES).resolve(weights)
        else:  # a custom architecture or an unlisted tag: its checkpoint is local
            self.weights_path = locate_weights(weights, CLIP_FILES, "clip")
        config, preprocess = None, {}
        if model_config is not None:
            config = json.loads(Path(model_config).read_text()) if isinstance(model_config, (str, Path)) else dict(model_config)
        elif (self.weights_path.parent / "open_clip_config.json").is_file():
            # an HF-style open_clip folder describes its own checkpoint
            folder_cfg = json.loads((self.weights_path.parent / "open_clip_config.json").read_text())
            config, preprocess = folder_cfg.get("model_cfg"), folder_cfg.get("preprocess_cfg") or {}
        self.config_source = "model_config" if model_config is not None else (
            "open_clip_config.json" if config is not None else model)
        if config is not None:
            cfg = dict(config)
            cfg.pop("custom_text", None)
            net = open_clip.CLIP(**cfg)
            self.context_length = cfg.get("text_cfg", {}).get("context_length", 77)
            self.tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=self.context_length)
        else:
            if model not in open_clip.list_models():
                raise ValueError(f"clip: unknown open_clip model config {model!r} (give model_config for a custom one)")
            # the tag's activation, as open_clip.create_model(model, pretrained=tag) sets it (openai: QuickGELU)
            quick_gelu = bool((open_clip.get_pretrained_cfg(model, pretrained) or {}).get("quick_gelu", False))
            net = open_clip.create_model(model, pretrained=None, device="cpu", force_quick_gelu=quick_gelu)
            self.tokenizer = open_clip.get_tokenizer(model)
        try:
            open_clip.load_checkpoint(net, str(self.weights_path))
        except RuntimeError as exc:
            raise RuntimeError(f"clip: {self.weights_path} does not fit model {model}: "
                               f"{str(exc).splitlines()[0]}") from exc
        self.net = net.to(self.device).eval().requires_grad_(False)
        visual = self.net.visual
        size = visual.image_size
        self.image_size = size if isinstance(size, int) else size[0]
        pcfg = preprocess or getattr(visual, "preprocess_cfg", {}) or {}
        mean = pcfg.get("mean", getattr(visual, "image_mean", None)) or open_clip.OPENAI_DATASET_MEAN
        std = pcfg.get("std", getattr(visual, "image_std", None)) or open_clip.OPENAI_DATASET_STD
        self.mean = torch.tensor(mean, device=self.device).view(1, 3, 1, 1)
        self.std = torch.tensor(std, device=self.device).view(1, 3, 1, 1)
        self._class_cache: dict[tuple, torch.Tensor] = {}
        self._version = open_clip.__version__

    @classmethod
    def weight_sources(cls, model: str = "ViT-B-32", pretrained: str = "openai", model_config: Any = None,
                       **params: Any) -> list:
        import open_clip

        if model_config is not None or not open_clip.get_pretrained_cfg(model, pretrained):
            return []  # a custom checkpoint: only the user has it (the evaluator names it when missing)
        return [open_clip_source(model, pretrained, CLIP_FILES)]

    # ------------------------------------------------------------------ embeddings
    @torch.no_grad()
    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        x = resize_center_crop(images.float().to(self.device), self.image_size)
        x = (x - self.mean) / self.std
        return F.normalize(self.net.encode_image(x).float(), dim=-1)

    @torch.no_grad()
    def encode_texts(self, texts: list[str]) -> torch.Tensor:
        out = []
        for i in range(0, len(texts), self.batch_size):
            tokens = self.tokenizer(texts[i : i + self.batch_size]).to(self.device)
            out.append(F.normalize(self.net.encode_text(tokens).float(), dim=-1))
        return torch.cat(out)

    def templates_for(self, space: str | None) -> list[str]:
        t = self.templates
        if isinstance(t, dict):
            t = t.get(space) or t.get("default")
        return list(t) if t else DEFAULT_TEMPLATES

    def class_embeddings(self, classes: tuple[str, ...], space: str | None) -> torch.Tensor:
        key = (classes, space)
        if key not in self._class_cache:
            templates = self.templates_for(space)
            texts = [tpl.format(c.replace("_", " ")) for c in classes for tpl in templates]
            emb = self.encode_texts(texts).view(len(classes), len(templates), -1).mean(1)
            self._class_cache[key] = F.normalize(emb, dim=-1)
        return self._class_cache[key]

    def label_space(self, item: dict) -> tuple[list[str] | None, str | None]:
        space = item.get("label_space") if isinstance(item.get("label_space"), str) else None
        classes = self.classes
        if isinstance(classes, dict):
            classes = classes.get(space) or classes.get("default")
        if not classes and isinstance(item.get("label_choices"), str) and item["label_choices"]:
            classes = item["label_choices"].split("|")
        return (list(classes) if classes else None), space

    # ------------------------------------------------------------------ scoring
    def score(self, images: torch.Tensor, items: list[dict]) -> list[dict]:
        img = self.encode_images(images)
        prompts = [str(it.get("prompt", "")) for it in items]
        txt = self.encode_texts(prompts)
        cos = (img * txt).sum(-1).cpu()
        out = [{"clip_cosine": float(c), "clip_score": float(c) * self.scale} for c in cos]
        for i, it in enumerate(items):
            classes, space = self.label_space(it)
            if not classes:
                continue
            target = it.get("erase_target")
            target_name = match_name(str(target), classes) if isinstance(target, str) and target else None
            if isinstance(target, str) and target and target_name is None:
                classes = [*classes, target]
                target_name = target
            emb = self.class_embeddings(tuple(classes), space)
            logits = img[i] @ emb.T
            pred = classes[int(logits.argmax())]
            rec = out[i]
            rec["clip_pred"] = pred
            rec["clip_pred_prob"] = float(torch.softmax(100 * logits, -1).max())
            label = it.get("label")
            if isinstance(label, str) and label:
                expected = match_name(label, classes)
                rec["correct"] = expected is not None and pred == expected
            if target_name is not None:
                rec["target_present"] = pred == target_name
        return out

    def provenance(self) -> dict:
        return {"name": self.name, "model": self.model_name, "pretrained": self.pretrained,
                "config": self.config_source, "weights": str(self.weights_path), "weights_sha256": file_sha256(self.weights_path),
                "version": f"open_clip {self._version}",
                "clip_score": f"{self.scale:g} x cosine(image, prompt)"}
