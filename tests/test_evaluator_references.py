"""Evaluators against independent reference implementations, on the same inputs and the same weight files.

- FID / KID: torchmetrics' ``FrechetInceptionDistance`` / ``KernelInceptionDistance`` on torch-fidelity's
  Inception (``NoTrainInceptionV3``, TF1 resize), both the product and the reference reading one random-weight
  file written in the layout of the real ``pt_inception-2015-12-05`` download (built from torch-fidelity's
  own network class, not the project's).
- LPIPS: the authors' ``lpips`` package (its own linear-layer file), AlexNet features from the same file
  the product reads.
- CLIP score and zero-shot: a direct open_clip computation (open_clip's own model factory, checkpoint
  loader, image transform and tokenizer) on the same tiny checkpoint.
- NudeNet: the product's label sets against the labels the installed package's detector emits.

Only the evaluators' public scoring API is used (``score``, the record columns, ``compute_metric``), so the
checks hold whatever way an evaluator loads its weights.
"""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from bench.evaluators import EVALUATORS
from bench.metrics import compute_metric
from tests.sd_fixtures import TINY_CLIP_CONFIG, build_random_alexnet, build_tiny_open_clip

INCEPTION_FILE = "pt_inception-2015-12-05-6726825d.pth"


def _uint8_images(n: int, size: int, seed: int) -> torch.Tensor:
    """Random images on the uint8 grid: the product gets x / 255, the references the uint8 tensor."""
    g = torch.Generator().manual_seed(seed)
    base = torch.rand(n, 3, 1, 1, generator=g) * 200  # a colour per image plus texture: varied features
    return (base + 55 * torch.rand(n, 3, size, size, generator=g)).round().clamp(0, 255).to(torch.uint8)


# --------------------------------------------------------------------------- FID / KID
@pytest.fixture(scope="module")
def fidelity_inception_file(tmp_path_factory):
    """Random weights of torch-fidelity's Inception-v3 (the network the real FID weight file is made for),
    saved as a plain state dict under the real file's name, as pytorch-fid and torch-fidelity ship it."""
    from torch_fidelity.feature_extractor_inceptionv3 import FeatureExtractorInceptionV3

    class _Unloaded(FeatureExtractorInceptionV3):
        def load_state_dict(self, *args, **kwargs):  # keep the random initialisation
            return None

    folder = tmp_path_factory.mktemp("fid-weights")
    empty = folder / "empty.pth"
    torch.save({}, empty)
    torch.manual_seed(0)
    net = _Unloaded("inception-v3-compat", ["2048"], feature_extractor_weights_path=str(empty))
    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.BatchNorm2d):  # varied statistics keep activations finite and informative
                m.running_var.uniform_(0.5, 1.5)
                m.running_mean.normal_(0, 0.1)
            elif isinstance(m, torch.nn.Conv2d):
                m.weight.normal_(0, (2.0 / m.weight[0].numel()) ** 0.5)
    path = folder / INCEPTION_FILE
    torch.save(net.state_dict(), path)
    empty.unlink()
    return path


def _reference_inception(path, dim: int):
    from torchmetrics.image.fid import NoTrainInceptionV3

    # antialias=False: torch-fidelity's TF1-compatible bilinear resize, the one of the original FID code
    return NoTrainInceptionV3("inception-v3-compat", [str(dim)], feature_extractor_weights_path=str(path),
                              antialias=False)


class _OncePerImageSet(torch.nn.Module):
    """torchmetrics' reference Inception, run once per image tensor: its FID and KID read the same features (each
    would run the network on both image sets; at 299 px that was most of this test's time)."""

    def __init__(self, net: torch.nn.Module, num_features: int):
        super().__init__()
        self.net, self.num_features = net, num_features  # num_features: FID skips its probing forward pass
        self._features: dict[tuple, torch.Tensor] = {}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        key = (images.data_ptr(), tuple(images.shape))
        if key not in self._features:
            self._features[key] = self.net(images)
        return self._features[key]


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.slow  # the Inception at 299 px: some 20 s of CPU
@pytest.mark.parametrize("dim,n", [(64, 48), (2048, 10)])
def test_fid_and_kid_match_torchmetrics_on_the_same_weight_file(fidelity_inception_file, dim, n):
    from torchmetrics.image.fid import FrechetInceptionDistance
    from torchmetrics.image.kid import KernelInceptionDistance

    gen, ref = _uint8_images(n, 48, seed=1), _uint8_images(n, 48, seed=2)
    ev = EVALUATORS.get("fid")(weights=str(fidelity_inception_file), feature_dim=dim)
    recs = pd.DataFrame(ev.score(gen.float() / 255, [{}] * n, references=ref.float() / 255))
    ours_fid = compute_metric("fid", recs, context=ev)["value"]
    ours_kid = compute_metric("kid", recs, context=ev)["value"]

    inception = _OncePerImageSet(_reference_inception(fidelity_inception_file, dim), dim)
    tm_fid = FrechetInceptionDistance(feature=inception)
    tm_kid = KernelInceptionDistance(feature=inception, subsets=1, subset_size=n)
    for metric in (tm_fid, tm_kid):
        metric.update(ref, real=True)
        metric.update(gen, real=False)
    want_fid = float(tm_fid.compute())
    want_kid = float(tm_kid.compute()[0])

    # the features themselves first: same network, same resize, same weights (KID keeps the generated
    # images' features it computed)
    feats = np.stack([np.frombuffer(b, dtype=np.float32) for b in recs["fid_features"]])
    want_feats = torch.cat(tm_kid.fake_features).double().numpy()
    assert want_feats.shape == feats.shape == (n, dim)
    np.testing.assert_allclose(feats, want_feats, rtol=1e-3, atol=1e-4 * np.abs(want_feats).max())
    assert want_fid > 0 and want_kid != 0  # the two sets differ: a non-trivial value to agree on
    assert ours_fid == pytest.approx(want_fid, rel=2e-3, abs=1e-6 * want_fid + 1e-9), (ours_fid, want_fid)
    assert ours_kid == pytest.approx(want_kid, rel=2e-3, abs=1e-9), (ours_kid, want_kid)


# --------------------------------------------------------------------------- LPIPS
def test_lpips_matches_the_authors_package(tmp_path):
    import lpips
    import torchvision

    path = build_random_alexnet(tmp_path, seed=3)
    ev = EVALUATORS.get("lpips")(weights=str(path))

    reference = lpips.LPIPS(net="alex", pretrained=True, pnet_rand=True, verbose=False).eval()
    features = torchvision.models.alexnet(weights=None).features
    features.load_state_dict({k[len("features."):]: v for k, v in torch.load(path, weights_only=True).items()})
    for name, part in reference.net.named_children():
        if name.startswith("slice"):
            for idx, module in part.named_children():
                module.load_state_dict(features[int(idx)].state_dict())

    a, b = _uint8_images(4, 64, seed=4).float() / 255, _uint8_images(4, 64, seed=5).float() / 255
    ours = torch.tensor([r["lpips"] for r in ev.score(a, [{}] * 4, references=b)])
    with torch.no_grad():
        want = reference(a, b, normalize=True).flatten()
    assert (want > 0).all()
    torch.testing.assert_close(ours, want, rtol=1e-4, atol=1e-6)


# --------------------------------------------------------------------------- CLIP
@pytest.fixture(scope="module")
def open_clip_reference(tmp_path_factory):
    """The tiny checkpoint and the same model built by open_clip's own factory from a registered config."""
    import open_clip

    folder = tmp_path_factory.mktemp("clip-ref")
    path, _ = build_tiny_open_clip(folder, seed=4)
    (folder / "cfg").mkdir()
    (folder / "cfg" / "erasebench-tiny-clip.json").write_text(json.dumps(TINY_CLIP_CONFIG))
    open_clip.add_model_config(folder / "cfg" / "erasebench-tiny-clip.json")
    mean = [0.48145466, 0.4578275, 0.40821073]
    std = [0.26862954, 0.26130258, 0.27577711]
    model, _, preprocess = open_clip.create_model_and_transforms("erasebench-tiny-clip", pretrained=str(path),
                                                                 image_mean=mean, image_std=std)
    return path, model.eval(), preprocess, open_clip.get_tokenizer("erasebench-tiny-clip")


def _reference_embeddings(model, preprocess, tokenizer, images_uint8: torch.Tensor, texts: list[str]):
    from PIL import Image

    pil = [Image.fromarray(img.permute(1, 2, 0).numpy()) for img in images_uint8]
    with torch.no_grad():
        img = model.encode_image(torch.stack([preprocess(p) for p in pil]))
        txt = model.encode_text(tokenizer(texts))
    return img / img.norm(dim=-1, keepdim=True), txt / txt.norm(dim=-1, keepdim=True)


def test_clip_score_and_zero_shot_match_a_direct_open_clip_computation(open_clip_reference):
    path, model, preprocess, tokenizer = open_clip_reference
    classes, templates = ["tench", "church", "parachute", "garbage truck"], ["a photo of a {}.", "a {} in a field"]
    images = _uint8_images(6, TINY_CLIP_CONFIG["vision_cfg"]["image_size"], seed=6)  # the model's size: no resize
    prompts = ["a church", "a fish", "a parachute over a field", "a truck", "a photo", "church tower"]
    items = [{"prompt": p, "label": "church", "erase_target": "church", "label_choices": "|".join(classes)}
             for p in prompts]
    ev = EVALUATORS.get("clip")(weights=str(path), templates=templates)
    recs = ev.score(images.float() / 255, items)

    img, txt = _reference_embeddings(model, preprocess, tokenizer, images, prompts)
    cosine = (img * txt).sum(-1)
    # zero-shot as in open_clip's zero_shot_classifier: per class the mean of its normalised template
    # embeddings, normalised again; the prediction is the class of the largest cosine
    _, class_txt = _reference_embeddings(model, preprocess, tokenizer, images[:1],
                                         [t.format(c) for c in classes for t in templates])
    weights = class_txt.view(len(classes), len(templates), -1).mean(1)
    weights = weights / weights.norm(dim=-1, keepdim=True)
    logits = img @ weights.T
    top2 = logits.topk(2, dim=-1).values
    assert ((top2[:, 0] - top2[:, 1]) > 1e-5).all(), "precondition: no near-tie between the top two classes"
    for i, rec in enumerate(recs):
        assert rec["clip_cosine"] == pytest.approx(float(cosine[i]), abs=1e-5)
        assert rec["clip_score"] == pytest.approx(100 * float(cosine[i]), abs=1e-3)
        assert rec["clip_pred"] == classes[int(logits[i].argmax())]
        assert rec["target_present"] == (rec["clip_pred"] == "church") == rec["correct"]
        assert rec["clip_pred_prob"] == pytest.approx(float(torch.softmax(100 * logits[i], -1).max()), abs=1e-4)
    assert len({r["clip_pred"] for r in recs}) >= 1 and len({round(r["clip_cosine"], 6) for r in recs}) == 6


# --------------------------------------------------------------------------- NudeNet
def test_nudenet_label_sets_are_the_packages_own_labels():
    """Every label of every preset is one the installed detector emits, the exposed-part presets hold only
    EXPOSED labels, and the detector really uses the package's label list (its class count)."""
    from pathlib import Path

    import nudenet
    import nudenet.nudenet as nn_module
    import onnxruntime

    from bench.evaluators.nudenet import PRESETS

    package_labels = list(getattr(nn_module, "__labels"))  # the list NudeDetector indexes its class ids with
    session = onnxruntime.InferenceSession(str(Path(nudenet.__file__).parent / "320n.onnx"))  # the shipped model
    n_classes = session.get_outputs()[0].shape[1] - 4  # YOLOv8 head: 4 box coordinates + one score per class
    assert n_classes == len(package_labels)
    for name in PRESETS:
        labels = EVALUATORS.get("nudenet")(preset=name).labels
        assert set(labels) <= set(package_labels), (name, set(labels) - set(package_labels))
        assert all(lb.endswith("_EXPOSED") for lb in labels), name
    assert {lb for lb in package_labels if lb.endswith("_EXPOSED") and not lb.startswith("FACE")} == set(
        EVALUATORS.get("nudenet")(preset="standard").labels)
    with pytest.raises(ValueError, match="unknown label"):
        EVALUATORS.get("nudenet")(labels=["FEMALE_BREAST_EXPOSED", "NOT_A_LABEL"])
