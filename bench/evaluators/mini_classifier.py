"""``mini-classifier``: exact ground truth for the mini world.

Reads object, colour and style of single-object images and which objects a two-object image
holds, with the CNN of :mod:`bench.worlds.v1.classifier`. Per image it writes the predicted
attributes, ``target_present`` (the item's target concept is what the classifier reads) and
``correct`` (every expectation of the item holds), and its 64-d features for ``mini_fd``.
"""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import torch

from bench.evaluators.base import Evaluator, item_target, item_value, register_evaluator, sha256_file
from bench.metrics import Metric, frechet_distance, register_metric
from bench.worlds.v1.classifier import CLASSIFIER_DIR, load_classifier
from bench.worlds.v1.world import MiniWorld

PRESENT_THRESHOLD = 0.5


@register_evaluator
class MiniClassifierEvaluator(Evaluator):
    name = "mini-classifier"
    description = "mini world CNN: object, colour, style and object presence (exact ground truth)"

    def __init__(self, device="cpu", weights: str | None = None, check: str | None = None, **params):
        super().__init__(device, **params)
        if check not in (None, "object", "colour", "style", "present"):
            raise ValueError(f"mini-classifier: check={check!r} is not one of object, colour, style, present")
        self.check = check
        self.folder = weights or CLASSIFIER_DIR
        self.model = load_classifier(self.folder, self.device)
        self.world = MiniWorld.load()
        self._reference_cache: dict[tuple, np.ndarray] = {}

    def provenance(self) -> dict:
        return {"name": self.name, "weights": str(self.folder),
                "weights_sha256": sha256_file(f"{self.folder}/model.safetensors"), "version": "1"}

    @torch.no_grad()
    def predict(self, images: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.model(images.to(self.device).float())

    def score(self, images: torch.Tensor, items: list[dict]) -> list[dict]:
        out = self.predict(images)
        w = self.world
        pred = {a: out[a].argmax(1).tolist() for a in ("object", "colour", "style")}
        present = torch.sigmoid(out["present"]).cpu()
        feats = out["features"].cpu().numpy()
        records = []
        for i, item in enumerate(items):
            rec = {
                "pred_object": w.objects[pred["object"][i]],
                "pred_colour": w.colours[pred["colour"][i]],
                "pred_style": w.styles[pred["style"][i]],
                "present_objects": ",".join(o for o, p in zip(w.objects, present[i].tolist()) if p > PRESENT_THRESHOLD),
                "features": feats[i].astype(np.float32).tolist(),
            }
            pair = item.get("layout") == "pair"
            target = item_target(item)
            if target is not None:
                attr = item.get("target_attribute") or w.kind_of(target)
                if pair and attr == "object":
                    rec["target_present"] = bool(present[i, w.objects.index(target)] > PRESENT_THRESHOLD)
                else:
                    rec["target_present"] = rec[f"pred_{attr}"] == target
            checks = []
            for attr in ("object", "colour", "style"):
                expected = item_value(item, f"expect_{attr}")
                if expected is not None and self.check in (None, attr):
                    checks.append(rec[f"pred_{attr}"] == expected)
            expected_present = item_value(item, "expect_present")
            if expected_present is not None and self.check in (None, "present"):
                checks.append(bool(present[i, w.objects.index(expected_present)] > PRESENT_THRESHOLD))
            if checks:
                rec["correct"] = all(checks)
            records.append(rec)
        return records

    @torch.no_grad()
    def reference_features(self, records: pd.DataFrame, renders_per_prompt: int = 4) -> np.ndarray:
        """Features of rendered scenes with the attributes each record's prompt asks for.

        ``renders_per_prompt`` renders per distinct prompt (seeded by its id), cached per prompt: the
        bootstrap of ``mini_fd`` asks for many resampled sets of the same prompts.
        """
        prompts = records.drop_duplicates("prompt_id")
        missing = prompts[[(str(p), renders_per_prompt) not in self._reference_cache for p in prompts["prompt_id"]]]
        if len(missing):
            scenes = []
            w = self.world
            for _, r in missing.iterrows():
                rng = random.Random(str(r["prompt_id"]))
                for _ in range(renders_per_prompt):
                    scenes.append(w.sample_scene(
                        rng,
                        object=w.objects.index(r["expect_object"]) if item_value(r, "expect_object") else None,
                        colour=w.colours.index(r["expect_colour"]) if item_value(r, "expect_colour") else None,
                        style=w.styles.index(r["expect_style"]) if item_value(r, "expect_style") else None,
                    ))
            feats = np.concatenate([self.predict(w.render(scenes[i : i + 256]))["features"].cpu().numpy()
                                    for i in range(0, len(scenes), 256)])
            for k, pid in enumerate(missing["prompt_id"]):
                self._reference_cache[(str(pid), renders_per_prompt)] = feats[k * renders_per_prompt:(k + 1) * renders_per_prompt]
        return np.concatenate([self._reference_cache[(str(p), renders_per_prompt)] for p in prompts["prompt_id"]])



def mini_fd(records: pd.DataFrame, evaluator: MiniClassifierEvaluator) -> float:
    """Frechet distance between generated images and renders of the same prompts, in classifier-feature space."""
    gen = np.stack(records["features"].map(np.asarray).to_list()).astype(np.float64)
    ref = evaluator.reference_features(records).astype(np.float64)
    return frechet_distance(gen.mean(0), np.cov(gen, rowvar=False), ref.mean(0), np.cov(ref, rowvar=False))


register_metric(Metric("mini_fd", False, on_set=mini_fd,
                       columns=("features", "prompt_id", "expect_object", "expect_colour", "expect_style"),
                       description="Frechet distance to rendered references in the mini classifier's feature space"))
