"""ItD (methods/itd.py): a sparse autoencoder on a text-encoder layer, trained as part of the edit (cached in its
folder, resumable), whose concept features are deactivated in the prompts it flags.

The SD protocol (apply on the tiny random SD folder, saved edit reloaded bit for bit) is in
tests/test_conformance_sd.py; here: the mini world's effect, the classifier, the cache, the resume and bad input.
"""

from __future__ import annotations

import json

import pytest
import torch

import methods._sae
import methods.itd as itd
from bench.backbone import load_backbone
from bench.config import MethodSpec, RunConfig
from bench.runner import edited_backbone
from bench.store import RunStore
from methods import ErasureRequest, get_method
from methods._sae import TopKSAE, train_sae
from tests.effects import assert_erases, assert_room

TARGET = "circle"
REQUEST = ErasureRequest(targets=[TARGET], seed=0)
# a small SAE for the plumbing tests (seconds); the effect test uses the mini preset
SMALL = {"preset": "mini", "n_latents": 64, "k": 4, "auxk": 8, "epochs": 2, "checkpoint_every": 2}


@pytest.fixture(scope="module")
def mini(mini_backbone):
    return mini_backbone


@pytest.fixture(scope="module")
def preset_edit(mini, tmp_path_factory):
    """The edit with the mini preset, its SAE trained once into a folder (the tests share it)."""
    folder = tmp_path_factory.mktemp("itd-sae")
    method = get_method("itd", {"sae_dir": str(folder)})
    return method.apply(mini, REQUEST), method, folder


# --------------------------------------------------------------------------- the paper's effect
# the bar (ERASURE_GAIN, OTHER_MARGIN) and its check: tests/effects.py


@pytest.mark.effects
@pytest.mark.slow
def test_erases_the_target_and_keeps_other_objects(mini, preset_edit, effect_probe):
    """Named circle prompts lose the circle, other objects are kept (mini preset, measured on EFFECT_SEED)."""
    before = effect_probe(mini, TARGET)
    assert_room(before)
    after = effect_probe(preset_edit[0], TARGET)
    assert_erases("itd on the mini world", before, after)


# --------------------------------------------------------------------------- the classifier and the hook
def test_only_prompts_the_sae_flags_change_and_the_input_is_untouched(mini, preset_edit):
    edited, method, _ = preset_edit
    info = edited.edits[-1]["itd"]
    assert info["features"] and info["threshold"] is not None
    assert not any(layer._forward_hooks for layer in itd.encoder_layers(mini)), "the input backbone got a hook"
    assert edited.unet is mini.unet  # nothing of the UNet changes: it is shared, not copied
    kept = ["a blue square", "a striped green star", ""]
    assert torch.equal(mini.encode(kept), edited.encode(kept)), "a prompt without the target changed"
    changed = edited.encode(["a red circle"]) - mini.encode(["a red circle"])
    assert changed.abs().max() > 0, "the target prompt was not edited"
    assert edited.fingerprint() != mini.fingerprint()
    # the deactivation acts on the layer's output: text embeddings of the whole batch come from one pass
    both = edited.encode(["a red circle", "a blue square"])
    assert torch.equal(both[1], mini.encode(["a blue square"])[0])


def test_cost_and_deviations_are_reported(preset_edit):
    edited, method, _ = preset_edit
    for key in ("sae_train_seconds", "sae_params", "sae_steps", "features"):
        assert key in method.stats
    assert method.stats["sae_params"] == sum(p.numel() for p in edited.guidance_hooks[0].sae.parameters())
    assert any("keep_residual" in d for d in edited.edits[-1]["itd"]["deviations"])


# --------------------------------------------------------------------------- the SAE: cache, fingerprint, resume
def test_the_sae_is_cached_in_its_folder_and_the_fingerprint_covers_it(mini, preset_edit):
    edited, _, folder = preset_edit
    [sae_dir] = folder.glob("sae-*")
    assert (sae_dir / "sae.safetensors").exists() and not (sae_dir / "checkpoint").exists()
    again = get_method("itd", {"sae_dir": str(folder)})
    reloaded = again.apply(mini, REQUEST)
    assert again.stats["sae_loaded"] == 1
    assert reloaded.fingerprint() == edited.fingerprint()
    # the SAE's weights are part of the backbone fingerprint
    with torch.no_grad():
        reloaded.guidance_hooks[0].sae.decoder.weight[0, 0] += 1.0
    reloaded.guidance_hooks[0].sae_sha256 = itd._sha256_state(reloaded.guidance_hooks[0].sae)
    assert reloaded.fingerprint() != edited.fingerprint()


def test_a_killed_training_resumes_to_the_weights_of_an_uninterrupted_one():
    x = torch.randn(512, 16, generator=torch.Generator().manual_seed(0))
    rows = lambda step: x[(step * 64) % 512:(step * 64) % 512 + 64]  # noqa: E731
    common = dict(lr=1e-3, adam_eps=6.25e-10, warmup_steps=2, auxk_coef=1 / 32, mse_scale=1.0, checkpoint_every=3,
                  fingerprint={"run": 1})

    def fresh():
        return TopKSAE(16, 32, 4, 8, 5, generator=torch.Generator().manual_seed(1))

    whole = fresh()
    train_sae(whole, rows, 10, checkpoint_dir=None, **common)

    def killed(step):
        if step == 7:
            raise KeyboardInterrupt
        return rows(step)

    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        with pytest.raises(KeyboardInterrupt):
            train_sae(fresh(), killed, 10, checkpoint_dir=Path(tmp), **common)
        resumed = fresh()
        result = train_sae(resumed, rows, 10, checkpoint_dir=Path(tmp), **common)
        assert result.resumed_from == 7
        for (name, a), b in zip(whole.state_dict().items(), resumed.state_dict().values()):
            assert torch.equal(a, b), name
        with pytest.raises(ValueError, match="different run"):
            train_sae(fresh(), rows, 10, checkpoint_dir=Path(tmp), **{**common, "fingerprint": {"run": 2}})


def test_a_killed_edit_resumes_its_sae_from_the_folder(mini, tmp_path, monkeypatch):
    real = methods._sae.train_sae

    def killed_at_3(sae, batch, total, **kw):
        def stop(step):
            if step == 3:
                raise KeyboardInterrupt
            return batch(step)
        return real(sae, stop, total, **kw)

    monkeypatch.setattr(methods._sae, "train_sae", killed_at_3)  # itd imports it when it trains
    with pytest.raises(KeyboardInterrupt):
        get_method("itd", {**SMALL, "sae_dir": str(tmp_path / "a")}).apply(mini, REQUEST)
    monkeypatch.setattr(methods._sae, "train_sae", real)
    resumed = get_method("itd", {**SMALL, "sae_dir": str(tmp_path / "a")})
    edited = resumed.apply(mini, REQUEST)
    record = json.loads(next((tmp_path / "a").glob("sae-*/sae.json")).read_text())
    assert record["resumed_from"] == 3  # Ctrl-C at step 3 checkpoints there (a kill -9: the last one, step 2)
    whole = get_method("itd", {**SMALL, "sae_dir": str(tmp_path / "b")})
    assert whole.apply(mini, REQUEST).guidance_hooks[0].sae_sha256 == edited.guidance_hooks[0].sae_sha256


# --------------------------------------------------------------------------- in a run
def test_the_run_keeps_the_sae_in_the_edit_folder_and_a_reused_edit_reproduces(mini, tmp_path):
    spec = MethodSpec(name="itd", params=SMALL)
    config = RunConfig(model="mini", targets=[TARGET], methods=[spec])
    method = get_method("itd", SMALL)
    store = RunStore(tmp_path / "run")
    edited, cost = edited_backbone(mini, spec.row_name, spec, method, REQUEST, store)
    folder = store.edit_dir(spec.row_name, TARGET)
    assert (folder / "edit.json").exists() and list(folder.glob("sae-*/sae.safetensors"))
    assert cost["sae_params"] > 0 and "sae_train_seconds" in cost
    reuse = MethodSpec(name="itd", params=SMALL, edit=str(folder))
    other_seed = ErasureRequest(targets=[TARGET], seed=5)  # a run with another seed reuses the edit as saved
    again, cost = edited_backbone(mini, reuse.row_name, reuse, get_method("itd", SMALL), other_seed,
                                  RunStore(tmp_path / "other"))
    assert "load_seconds" in cost and again.fingerprint() == edited.fingerprint()
    assert config.methods[0].name == "itd"


# --------------------------------------------------------------------------- bad input
def test_bad_input_gets_one_clear_error(mini, tiny_sd):
    with pytest.raises(ValueError, match=r"layer=7 is not a layer of this text encoder \(0\.\.2\); set layer"):
        get_method("itd", {"layer": 7}).apply(mini, REQUEST)
    with pytest.raises(ValueError, match="k=9 must not exceed n_latents=8"):
        get_method("itd", {"n_latents": 8, "k": 9}).apply(mini, REQUEST)
    sd = load_backbone(str(tiny_sd))
    with pytest.raises(ValueError, match="no prompt corpus.*preserve"):
        get_method("itd", {"layer": 0}).apply(sd, ErasureRequest(targets=["cat"]))


# --------------------------------------------------------------------------- the authors' SAE corpora (SD recipes)
def write_corpus_files(folder) -> dict[str, list[str]]:
    """Small stand-ins (the test writes them; the public files are fetched by a run) with the official columns."""
    rows = {"coco_30k.csv": [f"a coco caption {i}" for i in range(60)],
            "diffusiondb_nsfw.csv": ["nsfw prompt one", "nsfw prompt, two"],
            "celebrity_100_concepts.csv": ["A portrait of Adam Driver", "A portrait of Adam Driver", "Emma Stone"],
            "art_100_concepts.csv": ["Image in the style of Brent Heighton", "Art by A.J.Casson"]}
    (folder / "coco_30k.csv").write_text("image_id,prompt\n" + "".join(f"{i},{p}\n" for i, p in
                                                                        enumerate(rows["coco_30k.csv"])))
    (folder / "diffusiondb_nsfw.csv").write_text("image_name,prompt,seed\n" + "".join(
        f'x{i}.png,"{p}",{i}\n' for i, p in enumerate(rows["diffusiondb_nsfw.csv"])))
    (folder / "celebrity_100_concepts.csv").write_text(",type,prompt,evaluation_seed\n" + "".join(
        f"{i},erased,{p},{i}\n" for i, p in enumerate(rows["celebrity_100_concepts.csv"])))
    (folder / "art_100_concepts.csv").write_text(",type,artist,prompt,evaluation_seed\n" + "".join(
        f"{i},0,x,{p},{i}\n" for i, p in enumerate(rows["art_100_concepts.csv"])))
    return rows


@pytest.mark.parametrize("kind, target, corpus_files", [
    ("nudity", "nudity", ["diffusiondb_nsfw.csv"]),
    ("identity", "Adam Driver", ["celebrity_100_concepts.csv", "art_100_concepts.csv"]),
    ("style", "Van Gogh", ["celebrity_100_concepts.csv", "art_100_concepts.csv"]),
])
def test_the_sd_recipes_train_the_sae_on_the_authors_public_corpora(tmp_path, kind, target, corpus_files):
    """scripts/config/config_text_nsfw.json trains the nudity SAE on diffusiondb_nsfw + coco, config_text.json the
    celebrity/style SAE on celebrity_100_concepts + art_100_concepts + coco (6e8869a). The recipes' files join the
    corpus after COCO, whose first 50 rows stay the retain set. (Before: COCO and the target words only.)"""
    from types import SimpleNamespace

    from bench.runner import build_request
    from methods.recipes import pinned

    rows = write_corpus_files(tmp_path)
    recipe = itd.RECIPES[kind]
    assert [f.name for f in recipe.extra_files] == corpus_files and all(pinned(f.source()) for f in recipe.extra_files)
    cfg = RunConfig.model_validate({"targets": [target], "kind": kind, "data_dir": str(tmp_path)})
    method = get_method("itd")
    sd = SimpleNamespace(kind="sd")
    unit, request = build_request(cfg, MethodSpec(name="itd"), method, target, sd)
    targets, retain, corpus = unit.prompt_sets(sd, request, unit.config)
    assert retain == rows["coco_30k.csv"][:50]
    authors = [p for f in corpus_files for p in dict.fromkeys(rows[f])]
    assert authors and all(p in corpus for p in authors) and set(targets) <= set(corpus)
    assert corpus[:60] == rows["coco_30k.csv"]  # COCO first, then the authors' prompts (deduplicated)
    assert unit.fingerprint()["recipe"]["extra_files"][0]["name"] == corpus_files[0]
