"""``fid`` / ``kid``: Inception-v3 features for the set metrics ``fid`` and ``kid``.

torchmetrics' FID/KID need ``torch-fidelity`` and download its Inception weights, so this module
builds the same network itself (the TF "2015-12-05" Inception-v3 used by every FID
implementation: torchvision blocks with the FID pooling variants, 1008 classes) and reads its
weights from a local file: ``pt_inception-2015-12-05-6726825d.pth`` (pytorch-fid) or
``weights-inception-2015-12-05-6726825d.pth`` (torch-fidelity; same tensors and names), or a
``.safetensors`` conversion. Images are quantised to uint8, resized to 299x299 with TF1-style
bilinear interpolation (as torch-fidelity does) and scaled to [-1, 1].

Params: ``weights`` (the file or its folder; default ``$ERASEBENCH_WEIGHTS``), ``feature_dim``
(2048 = pool3, the standard; 768, 192 or 64 as in torchmetrics), ``reference``: ``unedited``
(default: the unedited model's image for the same prompt and seed, as HUB's FID_SD) or a folder
of real images (e.g. COCO val; its features are cached under ``$ERASEBENCH_CACHE/fid``),
``kid_subset_size`` (1000) and ``kid_subsets`` (100).

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
import torch.nn.functional as F
from torchvision.models.inception import (
    BasicConv2d,
    Inception3,
    InceptionA,
    InceptionAux,
    InceptionB,
    InceptionC,
    InceptionD,
    InceptionE,
)

from bench.evaluators.base import Evaluator, register_evaluator
from bench.evaluators.clip import file_sha256, load_state_dict, locate_weights
from bench.metrics import Metric, register_metric

INCEPTION_FILES = ("pt_inception-2015-12-05-6726825d.pth", "weights-inception-2015-12-05-6726825d.pth",
                   "pt_inception-2015-12-05-6726825d.safetensors", "weights-inception-2015-12-05-6726825d.safetensors")
FEATURE_DIMS = (64, 192, 768, 2048)
IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


# --------------------------------------------------------------------------- the FID Inception
class _FIDInceptionA(InceptionA):
    def _forward(self, x):
        b1 = self.branch1x1(x)
        b5 = self.branch5x5_2(self.branch5x5_1(x))
        b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False))
        return [b1, b5, b3, bp]


class _FIDInceptionC(InceptionC):
    def _forward(self, x):
        b1 = self.branch1x1(x)
        b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
        bd = x
        for layer in (self.branch7x7dbl_1, self.branch7x7dbl_2, self.branch7x7dbl_3, self.branch7x7dbl_4,
                      self.branch7x7dbl_5):
            bd = layer(bd)
        bp = self.branch_pool(F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False))
        return [b1, b7, bd, bp]


class _FIDInceptionE(InceptionE):
    """Mixed_7b pools with an average that ignores padding; Mixed_7c (``max_pool``) with a max."""

    max_pool = False

    def _forward(self, x):
        b1 = self.branch1x1(x)
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        if self.max_pool:
            pooled = F.max_pool2d(x, kernel_size=3, stride=1, padding=1)
        else:
            pooled = F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)
        return [b1, b3, bd, self.branch_pool(pooled)]


class _FIDInceptionEMax(_FIDInceptionE):
    max_pool = True


class FIDInceptionV3(Inception3):
    """Inception-v3 in the layout of the FID weight files; ``features(x, dim)`` gives pooled features."""

    def __init__(self):
        super().__init__(num_classes=1008, aux_logits=False, init_weights=False,
                         inception_blocks=[BasicConv2d, _FIDInceptionA, InceptionB, _FIDInceptionC,
                                           InceptionD, _FIDInceptionE, InceptionAux])
        self.Mixed_7c = _FIDInceptionEMax(2048)

    def features(self, x: torch.Tensor, dim: int = 2048) -> torch.Tensor:
        """x: [N, 3, 299, 299] in [-1, 1] -> [N, dim]."""
        x = self.maxpool1(self.Conv2d_2b_3x3(self.Conv2d_2a_3x3(self.Conv2d_1a_3x3(x))))
        if dim == 64:
            return F.adaptive_avg_pool2d(x, 1).flatten(1)
        x = self.maxpool2(self.Conv2d_4a_3x3(self.Conv2d_3b_1x1(x)))
        if dim == 192:
            return F.adaptive_avg_pool2d(x, 1).flatten(1)
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d", "Mixed_6a", "Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
            x = getattr(self, name)(x)
        if dim == 768:
            return F.adaptive_avg_pool2d(x, 1).flatten(1)
        x = self.Mixed_7c(self.Mixed_7b(self.Mixed_7a(x)))
        return F.adaptive_avg_pool2d(x, 1).flatten(1)


def _tf1_resize_axis(x: torch.Tensor, out: int, axis: int) -> torch.Tensor:
    """TF1 ``resize_bilinear`` (align_corners=False, no half-pixel centres) along one axis."""
    n = x.shape[axis]
    src = torch.arange(out, dtype=torch.float64, device=x.device) * (n / out)
    i0 = src.floor().long().clamp(max=n - 1)
    i1 = (i0 + 1).clamp(max=n - 1)
    w = (src - i0.double()).to(x.dtype)
    shape = [1] * x.ndim
    shape[axis] = out
    w = w.view(shape)
    return x.index_select(axis, i0) * (1 - w) + x.index_select(axis, i1) * w


def inception_input(images: torch.Tensor) -> torch.Tensor:
    """[N, 3, H, W] in [0, 1] -> uint8 grid -> 299x299 (TF1 bilinear) -> [-1, 1]."""
    x = (images.float().clamp(0, 1) * 255).round()
    if x.shape[-2:] != (299, 299):
        x = _tf1_resize_axis(_tf1_resize_axis(x, 299, 2), 299, 3)
    return (x - 128) / 128


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


for _m in (Metric("fid", False, on_set=_fid_on_set,
                  description="Frechet Inception distance to the reference images (unedited model or a real set)"),
           Metric("kid", False, on_set=_kid_on_set,
                  description="kernel Inception distance (unbiased MMD^2, cubic kernel) to the reference images")):
    from bench.metrics import METRICS as _METRICS

    if _m.name not in _METRICS:
        register_metric(_m)


# --------------------------------------------------------------------------- evaluator
@register_evaluator
class FIDEvaluator(Evaluator):
    name = "fid"
    description = "Inception-v3 (FID weights) features for the set metrics fid and kid"

    def __init__(self, device="cpu", weights: str | None = None, feature_dim: int = 2048,
                 reference: str = "unedited", kid_subset_size: int = 1000, kid_subsets: int = 100,
                 batch_size: int = 32, **params: Any):
        super().__init__(device, weights=weights, feature_dim=feature_dim, reference=reference, **params)
        if int(feature_dim) not in FEATURE_DIMS:
            raise ValueError(f"{self.name}: feature_dim {feature_dim} is not one of {FEATURE_DIMS}")
        self.feature_dim, self.batch_size = int(feature_dim), int(batch_size)
        self.kid_subset_size, self.kid_subsets = int(kid_subset_size), int(kid_subsets)
        self.weights_path = locate_weights(
            weights, INCEPTION_FILES, self.name,
            hint="it is the FID Inception of pytorch-fid's release 'fid_weights' (or torch-fidelity's "
                 "weights-inception-2015-12-05-6726825d.pth)")
        net = FIDInceptionV3()
        sd = load_state_dict(self.weights_path)
        missing, unexpected = net.load_state_dict(sd, strict=False)
        missing = [k for k in missing if not k.startswith("AuxLogits")]
        if missing:
            raise RuntimeError(f"{self.name}: {self.weights_path} is not an FID Inception state dict "
                               f"(missing {len(missing)} tensors, e.g. {missing[0]})")
        self.net = net.to(self.device).eval().requires_grad_(False)
        self.reference = reference
        self.needs_reference = reference == "unedited"
        self._ref: np.ndarray | None = None
        if not self.needs_reference and not Path(reference).expanduser().is_dir():
            raise FileNotFoundError(f"{self.name}: reference image folder {reference} not found "
                                    "(give a folder of real images, or reference: unedited)")

    @torch.no_grad()
    def features(self, images: torch.Tensor) -> np.ndarray:
        out = []
        for i in range(0, len(images), self.batch_size):
            x = inception_input(images[i : i + self.batch_size].to(self.device))
            out.append(self.net.features(x, self.feature_dim).float().cpu())
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
        return {"name": self.name, "model": "inception-v3 (TF 2015-12-05, FID)", "weights": self.weights_path.name,
                "weights_sha256": file_sha256(self.weights_path), "version": f"erasebench fid ({torch.__version__})",
                "feature_dim": self.feature_dim, "reference": self.reference}


@register_evaluator
class KIDEvaluator(FIDEvaluator):
    name = "kid"
    description = "the fid evaluator under the name kid (same Inception features; metrics fid and kid)"

