"""``fid`` / ``kid``: Inception-v3 features for the set metrics ``fid`` and ``kid``.

The network is torchmetrics' ``NoTrainInceptionV3`` (torch-fidelity's ``inception-v3-compat``: the
TF "2015-12-05" Inception-v3 every FID implementation uses, 1008 classes) with torch-fidelity's
TF1-style bilinear resize (``antialias=False``), so features match torch-fidelity and
``torchmetrics.image.fid.FrechetInceptionDistance(..., antialias=False)``. Its weights come from a
local file when there is one (param ``weights``, the file or its folder, else
``$ERASEBENCH_WEIGHTS``): ``weights-inception-2015-12-05-6726825d.pth`` (torch-fidelity) or
``pt_inception-2015-12-05-6726825d.pth`` (pytorch-fid; same tensors and names); else torch-fidelity
downloads them into the torch hub cache (:mod:`bench.evaluators.weights`). Up to issue 21 this
module rebuilt the network by hand; ``benchmarks/fid_backends.py`` found the two bit-identical on
shared weights (all feature sizes, 32-299 px inputs) at the same speed, so the copy went. Images
are quantised to uint8 (rounded) before the network, as a saved PNG would be.

Params: ``feature_dim`` (2048 = pool3, the standard; 768, 192 or 64 as in torchmetrics),
``reference``: ``unedited`` (default: the unedited model's image for the same prompt and seed, as
HUB's FID_SD) or a folder of real images (e.g. COCO val; its features are cached under
``$ERASEBENCH_CACHE/fid``), ``kid_subset_size`` (1000) and ``kid_subsets`` (100).

Per-image records hold the features (``fid_features``, and ``fid_ref_features`` with
``reference: unedited``) as float32 bytes, so the set metrics, their bootstrap intervals and a
resumed run need no model. ``fid`` = ||mu1-mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2); ``kid`` = the
unbiased MMD^2 with the cubic polynomial kernel, averaged over subsets (x1000 is *not* applied).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from bench.evaluators.base import Evaluator, register_evaluator
from bench.evaluators.clip import file_sha256
from bench.evaluators.weights import WeightSource, fid_inception_source
from bench.metrics import Metric, register_metric

INCEPTION_FILES = ("weights-inception-2015-12-05-6726825d.pth", "pt_inception-2015-12-05-6726825d.pth")
FEATURE_DIMS = (64, 192, 768, 2048)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def weight_source() -> WeightSource:
    """The FID Inception file: torch-fidelity's release, cached by torch hub."""
    return fid_inception_source("fid", INCEPTION_FILES)


def to_uint8(images: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] in [0, 1] -> uint8, rounded (what a saved PNG holds)."""
    return (images.float().clamp(0, 1) * 255).round().to(torch.uint8)


# --------------------------------------------------------------------------- math
def _as_matrix(rows: pd.Series) -> np.ndarray:
    return np.stack([np.frombuffer(b, dtype=np.float32) for b in rows]).astype(np.float64)


def trace_sqrt_product(a: np.ndarray, b: np.ndarray) -> float:
    """Tr((S_a S_b)^1/2) for the sample covariances of the rows of a and b, without sqrtm:
    the eigenvalues of S_a S_b are those of S_a^1/2 S_b S_a^1/2 (symmetric PSD); with fewer
    samples than dimensions they are the squared singular values of A_c B_c^T / sqrt((n-1)(m-1))."""
    ac, bc = a - a.mean(0), b - b.mean(0)
    n, m, d = len(a), len(b), a.shape[1]
    if min(n, m) - 1 <= 0:
        return 0.0
    if min(n, m) < d:
        s = np.linalg.svd(ac @ bc.T, compute_uv=False)
        return float(s.sum() / np.sqrt((n - 1) * (m - 1)))
    sa, sb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(sa)
    root = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    ev = np.linalg.eigvalsh(root @ sb @ root)
    return float(np.sqrt(np.clip(ev, 0, None)).sum())


def frechet_distance_features(a: np.ndarray, b: np.ndarray) -> float:
    mu = a.mean(0) - b.mean(0)
    tr_a = float(a.var(0, ddof=1).sum()) if len(a) > 1 else 0.0  # Tr(S) without forming S
    tr_b = float(b.var(0, ddof=1).sum()) if len(b) > 1 else 0.0
    return float(mu @ mu + tr_a + tr_b - 2 * trace_sqrt_product(a, b))


def kernel_inception_distance(a: np.ndarray, b: np.ndarray, subset_size: int = 1000, subsets: int = 100,
                              seed: int = 0) -> float:
    """Unbiased MMD^2, kernel k(x, y) = (x.y / d + 1)^3, averaged over random subsets."""
    d = a.shape[1]
    size = min(subset_size, len(a), len(b))
    if size < 2:
        return float("nan")
    ta, tb = torch.from_numpy(a), torch.from_numpy(b)
    rng = np.random.default_rng(seed)
    whole = size == len(a) == len(b)
    values = []
    for _ in range(1 if whole else subsets):
        x = ta if whole else ta[rng.choice(len(a), size, replace=False)]
        y = tb if whole else tb[rng.choice(len(b), size, replace=False)]
        kxx, kyy, kxy = ((x @ x.T) / d + 1) ** 3, ((y @ y.T) / d + 1) ** 3, ((x @ y.T) / d + 1) ** 3
        m = size
        mmd = ((kxx.sum() - kxx.diagonal().sum()) / (m * (m - 1)) + (kyy.sum() - kyy.diagonal().sum()) / (m * (m - 1))
               - 2 * kxy.mean())
        values.append(float(mmd))
    return float(np.mean(values))


def _set_features(df: pd.DataFrame, context: Any, metric: str) -> tuple[np.ndarray, np.ndarray]:
    if "fid_features" not in df.columns:
        raise KeyError(f"metric {metric!r} needs the record column 'fid_features' (the fid/kid evaluator)")
    gen = _as_matrix(df["fid_features"])
    if "fid_ref_features" in df.columns and df["fid_ref_features"].notna().all():
        return gen, _as_matrix(df["fid_ref_features"])
    if context is None or not hasattr(context, "reference_features"):
        raise ValueError(f"metric {metric!r}: the records hold no reference features and no fid evaluator was given")
    return gen, context.reference_features()


def _fid_on_set(df: pd.DataFrame, context: Any) -> float:
    return frechet_distance_features(*_set_features(df, context, "fid"))


def _kid_on_set(df: pd.DataFrame, context: Any) -> float:
    a, b = _set_features(df, context, "kid")
    return kernel_inception_distance(a, b, getattr(context, "kid_subset_size", 1000), getattr(context, "kid_subsets", 100))


_SET_COLUMNS = ("fid_features", "fid_ref_features")  # what _set_features reads: the set bootstrap resamples these
for _m in (Metric("fid", False, on_set=_fid_on_set, columns=_SET_COLUMNS,
                  description="Frechet Inception distance to the reference images (unedited model or a real set)"),
           Metric("kid", False, on_set=_kid_on_set, columns=_SET_COLUMNS,
                  description="kernel Inception distance (unbiased MMD^2, cubic kernel) to the reference images")):
    from bench.metrics import METRICS as _METRICS

    if _m.name not in _METRICS:
        register_metric(_m)


# --------------------------------------------------------------------------- evaluator
@register_evaluator
class FIDEvaluator(Evaluator):
    name = "fid"
    description = "torchmetrics/torch-fidelity FID Inception-v3 features for the set metrics fid and kid"

    def __init__(self, device="cpu", weights: str | None = None, feature_dim: int = 2048,
                 reference: str = "unedited", kid_subset_size: int = 1000, kid_subsets: int = 100,
                 batch_size: int = 32, **params: Any):
        super().__init__(device, weights=weights, feature_dim=feature_dim, reference=reference, **params)
        if int(feature_dim) not in FEATURE_DIMS:
            raise ValueError(f"{self.name}: feature_dim {feature_dim} is not one of {FEATURE_DIMS}")
        self.feature_dim, self.batch_size = int(feature_dim), int(batch_size)
        self.kid_subset_size, self.kid_subsets = int(kid_subset_size), int(kid_subsets)
        self.weights_path = weight_source().resolve(weights)
        from torchmetrics.image.fid import NoTrainInceptionV3

        try:
            net = NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(self.feature_dim)],
                                     feature_extractor_weights_path=str(self.weights_path), antialias=False)
        except RuntimeError as exc:
            raise RuntimeError(f"{self.name}: {self.weights_path} is not an FID Inception state dict: "
                               f"{str(exc).splitlines()[0]}") from exc
        self.net = net.to(self.device).eval().requires_grad_(False)
        self.reference = reference
        self.needs_reference = reference == "unedited"
        self._ref: np.ndarray | None = None
        if not self.needs_reference and not Path(reference).expanduser().is_dir():
            raise FileNotFoundError(f"{self.name}: reference image folder {reference} not found "
                                    "(give a folder of real images, or reference: unedited)")

    @classmethod
    def weight_sources(cls, **params: Any) -> list:
        return [weight_source()]

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> np.ndarray:
        out = []
        for i in range(0, len(images), self.batch_size):
            x = to_uint8(images[i : i + self.batch_size].to(self.device))
            out.append(self.net(x).reshape(len(x), -1).float().cpu())
        return torch.cat(out).numpy().astype(np.float32)

    def score(self, images: torch.Tensor, items: list[dict], references: torch.Tensor | None = None) -> list[dict]:
        feats = self.features(images)
        out = [{"fid_features": f.tobytes()} for f in feats]
        if references is not None:
            for rec, f in zip(out, self.features(references)):
                rec["fid_ref_features"] = f.tobytes()
        return out

    def reference_features(self) -> np.ndarray:
        """Features of the reference folder's images (cached on disk by folder listing and weights)."""
        if self._ref is not None:
            return self._ref
        if self.needs_reference:
            raise ValueError(f"{self.name}: reference is 'unedited' but the records hold no reference features")
        from PIL import Image

        from bench.prompts import cache_root

        folder = Path(self.reference).expanduser()
        files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
        if not files:
            raise FileNotFoundError(f"{self.name}: no images in the reference folder {folder}")
        h = hashlib.sha256(json.dumps([file_sha256(self.weights_path), self.feature_dim,
                                       [(str(p.relative_to(folder)), p.stat().st_size) for p in files]]).encode())
        cache = cache_root() / "fid" / f"{h.hexdigest()[:24]}.npy"
        if cache.is_file():
            self._ref = np.load(cache).astype(np.float64)
            return self._ref
        feats = []
        for i in range(0, len(files), self.batch_size):
            batch = [torch.from_numpy(np.asarray(Image.open(p).convert("RGB"), dtype=np.float32) / 255).permute(2, 0, 1)
                     for p in files[i : i + self.batch_size]]
            feats.append(np.concatenate([self.features(b[None]) for b in batch]))  # sizes may differ
        arr = np.concatenate(feats)
        cache.parent.mkdir(parents=True, exist_ok=True)
        np.save(cache, arr)
        self._ref = arr.astype(np.float64)
        return self._ref

    def provenance(self) -> dict:
        import torch_fidelity
        import torchmetrics

        return {"name": self.name, "model": "inception-v3-compat (TF 2015-12-05, FID)", "weights": self.weights_path.name,
                "weights_sha256": file_sha256(self.weights_path),
                "version": f"torchmetrics {torchmetrics.__version__}, torch-fidelity {torch_fidelity.__version__}",
                "feature_dim": self.feature_dim, "reference": self.reference}


@register_evaluator
class KIDEvaluator(FIDEvaluator):
    name = "kid"
    description = "the fid evaluator under the name kid (same Inception features; metrics fid and kid)"

