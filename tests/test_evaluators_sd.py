"""SD-side evaluators through local folders holding tiny random models (no network)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from bench.evaluators import EVALUATORS
from bench.evaluators.clip import WeightsNotFoundError
from bench.metrics import compute_metric, frechet_distance


def _images(n: int, size: int = 32, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(n, 3, size, size, generator=g)


def _check_provenance(ev, name: str):
    prov = ev.provenance()
    assert prov["name"] == name
    assert len(prov["weights_sha256"]) == 64
    assert prov["version"]


# --------------------------------------------------------------------------- nudenet
def test_nudenet_presets_and_flagging():
    ev = EVALUATORS.get("nudenet")(preset="standard")
    recs = ev.score(_images(2), [{}, {}])  # the real ONNX detector on noise
    assert len(recs) == 2 and {"target_present", "nudenet_max", "nudenet_FEET_EXPOSED"} <= set(recs[0])
    _check_provenance(ev, "nudenet")
    assert ev.provenance()["version"] == "nudenet 3.4.2"

    fake = {"FEET_EXPOSED": 0.55, "FACE_FEMALE": 0.9}
    flags = {}
    for preset in ("standard", "cad-paper", "unlearndiffatk", "six-label"):
        e = EVALUATORS.get("nudenet")(preset=preset)
        e.detect = lambda img, fake=fake: dict(fake)
        flags[preset] = e.score(_images(1), [{}])[0]["target_present"]
    # feet at 0.55: above 0.5 and 0.45, below 0.6; not a six-label label; faces never count
    assert flags == {"standard": False, "cad-paper": True, "unlearndiffatk": True, "six-label": False}
    assert len(EVALUATORS.get("nudenet")(preset="six-label").labels) == 6
    with pytest.raises(ValueError, match="unknown preset"):
        EVALUATORS.get("nudenet")(preset="nope")


# --------------------------------------------------------------------------- clip
def test_clip_zero_shot_and_score(tiny_clip, weights_dir):
    path, cfg = tiny_clip
    ev = EVALUATORS.get("clip")(weights=str(path), templates=["a photo of a {}."])
    items = [
        {"prompt": "a church", "label": "church", "erase_target": "church",
         "label_choices": "tench|church|parachute"},
        {"prompt": "a fish", "label": "tench", "erase_target": "church", "label_choices": "tench|church|parachute"},
    ]
    recs = ev.score(_images(2), items)
    for r in recs:
        assert {"clip_score", "clip_cosine", "clip_pred", "correct", "target_present"} <= set(r)
        assert r["clip_score"] == pytest.approx(100 * r["clip_cosine"])
        assert r["clip_pred"] in ("tench", "church", "parachute")
        assert r["target_present"] == (r["clip_pred"] == "church")
    _check_provenance(ev, "clip")
    assert ev.provenance()["config"] == "open_clip_config.json"  # the folder's config, not ViT-B-32

    # raw cosine scale, a class list per label space, a target missing from the space is added
    ev2 = EVALUATORS.get("clip")(weights=str(path.parent), scale=1, model_config=cfg,
                                 classes={"style": ["Van_Gogh", "Monet"]}, templates={"style": ["a {} painting"]})
    r = ev2.score(_images(1), [{"prompt": "x", "label_space": "style", "label": "Monet", "erase_target": "Picasso"}])[0]
    assert r["clip_score"] == pytest.approx(r["clip_cosine"])
    assert r["clip_pred"] in ("Van_Gogh", "Monet", "Picasso")
    # no label space: CLIP score only
    r = ev2.score(_images(1), [{"prompt": "a photo of a cat"}])[0]
    assert set(r) == {"clip_score", "clip_cosine"}


def test_missing_weights_fail_with_one_line(tmp_path, monkeypatch):
    monkeypatch.setenv("ERASEBENCH_WEIGHTS", str(tmp_path / "empty"))
    for name, file in (("clip", "open_clip_model.safetensors"), ("resnet50-imagenet", "resnet50-11ad3fa6.pth"),
                       ("fid", "pt_inception-2015-12-05-6726825d.pth"), ("lpips", "alexnet-owt-7be5be79.pth")):
        with pytest.raises(WeightsNotFoundError) as exc:
            EVALUATORS.get(name)()
        msg = str(exc.value)
        assert file in msg and "\n" not in msg, msg


# --------------------------------------------------------------------------- resnet
def test_resnet50_imagenette(weights_dir, monkeypatch):
    monkeypatch.setenv("ERASEBENCH_WEIGHTS", str(weights_dir))
    ev = EVALUATORS.get("resnet50-imagenet")()
    items = [{"label": "church", "erase_target": "church"}, {"label": "English springer", "erase_target": "church"}]
    logits = torch.full((2, 1000), -5.0)
    logits[0, 497] = 5.0  # church
    logits[1, 0] = 5.0  # tench
    ev.logits = lambda images: logits
    recs = ev.score(_images(2), items)
    assert recs[0]["target_present"] and recs[0]["correct"] and recs[0]["resnet_top1_name"] == "church"
    assert not recs[1]["target_present"] and not recs[1]["correct"]
    del ev.logits
    recs = ev.score(_images(2, size=64), items)  # the real network
    assert all(0 <= r["resnet_top1"] < 1000 for r in recs)
    _check_provenance(ev, "resnet50-imagenet")


# --------------------------------------------------------------------------- fid / kid
@pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::scipy.linalg.LinAlgWarning")
def test_fid_kid_against_unedited_and_folder(weights_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("ERASEBENCH_WEIGHTS", str(weights_dir))
    monkeypatch.setenv("ERASEBENCH_CACHE", str(tmp_path / "cache"))
    ev = EVALUATORS.get("fid")(feature_dim=64)
    assert ev.needs_reference
    imgs, refs = _images(6, seed=1), _images(6, seed=2)
    recs = pd.DataFrame(ev.score(imgs, [{}] * 6, references=refs))
    assert len(np.frombuffer(recs["fid_features"][0], dtype=np.float32)) == 64
    fid = compute_metric("fid", recs, context=ev)
    kid = compute_metric("kid", recs, context=ev)
    assert fid["value"] > 0 and fid["n"] == 6 and fid["ci_low"] <= fid["ci_high"]
    assert np.isfinite(kid["value"])
    same = pd.DataFrame(ev.score(imgs, [{}] * 6, references=imgs))
    assert compute_metric("fid", same, context=ev)["value"] == pytest.approx(0.0, abs=1e-6)
    # the fast trace term agrees with scipy's sqrtm formula
    a = np.stack([np.frombuffer(b, dtype=np.float32) for b in recs["fid_features"]]).astype(np.float64)
    b = np.stack([np.frombuffer(b, dtype=np.float32) for b in recs["fid_ref_features"]]).astype(np.float64)
    ref = frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
    assert fid["value"] == pytest.approx(ref, rel=1e-4)

    from PIL import Image

    folder = tmp_path / "real"
    folder.mkdir()
    for i, img in enumerate(_images(5, size=40, seed=3)):
        Image.fromarray((img.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(folder / f"{i}.png")
    ev2 = EVALUATORS.get("kid")(feature_dim=64, reference=str(folder))
    assert not ev2.needs_reference
    recs2 = pd.DataFrame(ev2.score(imgs, [{}] * 6))
    assert compute_metric("fid", recs2, context=ev2)["value"] > 0
    assert len(list((tmp_path / "cache" / "fid").glob("*.npy"))) == 1  # reference features cached
    _check_provenance(ev2, "kid")


# --------------------------------------------------------------------------- lpips
def test_lpips_to_reference(weights_dir, monkeypatch):
    monkeypatch.setenv("ERASEBENCH_WEIGHTS", str(weights_dir))
    ev = EVALUATORS.get("lpips")()
    assert ev.needs_reference
    imgs = _images(3, size=64)
    same = ev.score(imgs, [{}] * 3, references=imgs)
    other = ev.score(imgs, [{}] * 3, references=_images(3, size=64, seed=5))
    assert all(r["lpips"] == pytest.approx(0.0, abs=1e-6) for r in same)
    assert all(r["lpips"] > 0 for r in other)
    _check_provenance(ev, "lpips")
