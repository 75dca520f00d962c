"""Weights: offline, `erasebench fetch` lists what is missing (exit 2); online, the libraries' own download is what runs.

No network here: the download is made unreachable and the test checks that the library's own
mechanism was the one that tried (the URL / hub repo it asked for), and that a file in the
library's cache or under $ERASEBENCH_WEIGHTS is used without any download.
"""

from __future__ import annotations

from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torchvision

from bench.cli import main
from bench.evaluators import EVALUATORS, sha256_file
from bench.evaluators.weights import WeightsNotFoundError
from tests.sd_fixtures import build_random_alexnet, build_random_fid_inception, build_random_resnet50


@pytest.fixture()
def empty_caches(tmp_path, monkeypatch):
    """No $ERASEBENCH_WEIGHTS file, empty torch hub and HF caches, HF offline, and every URL download refused."""
    import huggingface_hub.constants as hf_constants

    monkeypatch.setenv("ERASEBENCH_WEIGHTS", str(tmp_path / "weights"))
    monkeypatch.setenv("ERASEBENCH_CACHE", str(tmp_path / "erasebench-cache"))  # no cached prompt file either
    monkeypatch.setattr(torch.hub, "_hub_dir", str(tmp_path / "torch-hub"))
    monkeypatch.setattr(hf_constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setattr(hf_constants, "HF_HUB_OFFLINE", True)
    asked = []

    def unreachable(url, dst, *a, **k):
        asked.append(url)
        raise URLError("network unreachable (test)")

    monkeypatch.setattr(torch.hub, "download_url_to_file", unreachable)
    return tmp_path, asked


def test_fetch_offline_lists_each_missing_file_and_where(empty_caches, capsys, shared_prompts_dir):
    tmp, asked = empty_caches
    assert main(["fetch", "--suite", "coco", "--offline", "--data-dir", str(shared_prompts_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 3 and all(ln.startswith("erasebench: error: missing  ") for ln in err)
    text = "\n".join(err)
    for name, where in (("open_clip_model.safetensors", "timm/vit_base_patch32_clip_224.openai"),
                        ("weights-inception-2015-12-05-6726825d.pth", str(tmp / "torch-hub" / "checkpoints")),
                        ("alexnet-owt-7be5be79.pth", str(tmp / "torch-hub" / "checkpoints"))):
        assert name in text and where in text
    assert str(tmp / "weights") in text  # the offline override
    assert asked == []  # offline: nothing was downloaded or tried


def test_fetch_reports_present_files_and_exits_0(empty_caches, capsys, shared_prompts_dir):
    tmp, asked = empty_caches
    path = build_random_resnet50(tmp / "weights")
    assert main(["fetch", "--suite", "imagenette", "--offline", "--data-dir", str(shared_prompts_dir)]) == 0
    out = capsys.readouterr().out
    assert f"present  resnet50-imagenet: torchvision ResNet50_Weights.IMAGENET1K_V2: {path}" in out
    assert f"present  prompts (task target-class): {shared_prompts_dir / 'imagenette.csv'}" in out
    assert main(["fetch", "--suite", "mini-quick"]) == 0  # the mini classifier ships with the package
    assert asked == []


def test_fetch_offline_lists_the_prompt_files_a_run_needs(empty_caches, capsys, shared_prompts_dir):
    """An offline run needs the suite's prompt files as well as the weights: each missing one is named with where
    it is public and where to put it; with a data_dir that holds them, each is reported present."""
    tmp, asked = empty_caches
    build_random_resnet50(tmp / "weights")  # the weights present: what is missing is the prompts
    assert main(["fetch", "--suite", "imagenette", "--offline"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err and all(ln.startswith("erasebench: error: missing  prompts (task ") for ln in err), err
    assert any("prompt file imagenette.csv not found" in ln and "public at https://" in ln and "data_dir" in ln
               for ln in err)
    assert main(["fetch", "--suite", "imagenette", "--offline", "--data-dir", str(shared_prompts_dir)]) == 0
    out = capsys.readouterr().out
    assert len([ln for ln in out.splitlines() if ln.startswith("present  prompts (task ")]) == len(err)
    assert asked == []


def test_fetch_online_uses_the_library_download(empty_caches, capsys, monkeypatch, shared_prompts_dir):
    tmp, asked = empty_caches
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)  # tests/conftest.py sets it; fetch reads it as --offline
    assert main(["fetch", "--suite", "imagenette", "--data-dir", str(shared_prompts_dir)]) == 2  # download tried
    assert asked == [torchvision.models.ResNet50_Weights.IMAGENET1K_V2.url]
    err = capsys.readouterr().err
    assert "download failed" in err and "network unreachable" in err


def test_evaluators_download_through_their_libraries(empty_caches, monkeypatch):
    tmp, asked = empty_caches
    from torch_fidelity.feature_extractor_inceptionv3 import URL_INCEPTION_V3

    for name, url in (("resnet50-imagenet", torchvision.models.ResNet50_Weights.IMAGENET1K_V2.url),
                      ("lpips", torchvision.models.AlexNet_Weights.IMAGENET1K_V1.url),
                      ("fid", URL_INCEPTION_V3)):
        asked.clear()
        with pytest.raises(WeightsNotFoundError) as exc:
            EVALUATORS.get(name)()
        assert asked == [url], name  # torchvision's Weights.get_state_dict / torch-fidelity's own download
        msg = str(exc.value)
        assert "\n" not in msg and Path(url).name in msg and "download failed" in msg
    # open_clip: its pretrained tag resolves to the hub repo, fetched by open_clip's hf_hub_download
    import open_clip.pretrained as oc

    repos = []

    def hub_unreachable(repo_id, filename, **kw):
        repos.append((repo_id, filename))
        raise OSError("hub unreachable (test)")

    monkeypatch.setattr(oc, "hf_hub_download", hub_unreachable)
    with pytest.raises(WeightsNotFoundError) as exc:
        EVALUATORS.get("clip")(model="ViT-B-32", pretrained="openai")
    assert repos and {r for r, _ in repos} == {"timm/vit_base_patch32_clip_224.openai"}
    assert "open_clip_model.safetensors" in str(exc.value)


def test_cached_files_load_without_download_and_their_hash_is_recorded(empty_caches):
    tmp, asked = empty_caches
    hub = tmp / "torch-hub" / "checkpoints"
    resnet = build_random_resnet50(hub)  # the file name torchvision caches IMAGENET1K_V2 under
    fid = build_random_fid_inception(tmp / "fidsrc")
    fid = fid.rename(hub / "weights-inception-2015-12-05-6726825d.pth")  # torch-fidelity's cache name
    alex = build_random_alexnet(tmp / "weights")  # the offline override
    for name, path, params in (("resnet50-imagenet", resnet, {}), ("fid", fid, {"feature_dim": 64}),
                               ("lpips", alex, {})):
        ev = EVALUATORS.get(name)(**params)
        assert ev.weights_path == path
        assert ev.provenance()["weights_sha256"] == sha256_file(path)
    assert asked == []
    explicit = tmp / "nowhere"
    with pytest.raises(WeightsNotFoundError, match="nowhere"):  # an explicit path is never replaced by a download
        EVALUATORS.get("resnet50-imagenet")(weights=str(explicit))
    assert asked == []
