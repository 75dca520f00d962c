"""Every registered method, for every Stable Diffusion concept kind, conforms to the method protocol.

On the tiny random SD folder (``tests/sd_fixtures.py``), through the runner's own path (``build_request`` resolves
the kind's recipe, ``edited_backbone`` applies and saves the edit, then reloads it), with each method's iteration
counts cut to a few (:data:`CUT`, or a method class's own ``conformance_overrides``):

- apply works, and the backbone it was given is untouched (unet, text encoder and VAE weights);
- only the components the method declares (``edited_components``) change, and a weight-editing method changes
  one of them (an inference-time method attaches a guidance hook instead);
- images generated after the edit are finite;
- the saved edit, loaded onto a freshly loaded model, gives bit-identical images;
- the method's fingerprint changes when its recipe (anchor, preserve set, target prompts, params) or its
  algorithm version changes.

A recipe's public prompt file is replaced by a three-line stand-in of the same name in the run's ``data_dir``
(the real files are long and not part of the repository; reading them is tested in tests/test_recipes.py).
A new method is covered as soon as it is registered; if its paper schedule is long, give its class
``conformance_overrides = {...}`` (config fields that cut its iterations).
"""

from __future__ import annotations

import dataclasses

import pytest
import torch

from bench.backbone import Backbone, load_backbone
from bench.config import MethodSpec, RunConfig
from bench.edits import build_request, edited_backbone
from bench.generate import SamplerConfig, generate
from bench.store import RunStore
from methods import METHODS, ErasureRequest, Method, MethodConfig
from tests.sd_fixtures import tiny_sd  # noqa: F401  (fixture)

KINDS = ("nudity", "object", "style", "identity")
TARGETS = {"nudity": "nudity", "object": "cat", "style": "Van Gogh", "identity": "Angelina Jolie"}
COMPONENTS = ("unet", "text_encoder", "vae")

# Iteration counts cut to a few, per method (config fields; they win over the recipe's, as a caller's do).
# CAD: the paper's ratio 0.001 selects nothing in matrices this small, so one component per row.
CUT: dict[str, dict] = {
    "esd-x": {"iterations": 2, "ddim_steps": 3},
    "esd-u": {"iterations": 2, "ddim_steps": 3},
    "ca": {"iterations": 2, "batch_size": 2, "num_anchor_images": 2, "sample_steps": 2},
    "salun": {"epochs": 1, "num_images": 2, "batch_size": 2, "sample_steps": 2},
    "advunlearn": {"iterations": 2, "warmup_iter": 1, "attack_step": 1, "ddim_steps": 3, "retain_batch": 2},
    "cad-erase": {"timesteps": 2, "count": 1, "mode": "fast"},
    "cad-amplify": {"timesteps": 2, "count": 1, "n_images": 2, "image_steps": 2},
    "cad-random": {"count": 1},
    "conceptprune": {"sampling_steps": 2, "timesteps": 2, "skill_ratio": 0.1},
    "rece": {"epochs": 2},
}
SAMPLER = SamplerConfig("ddim", steps=2, guidance=5.0)
STAND_IN = ["a photo of a dog", "a red car on a street", "a bowl of fruit on a table"]


def cut(cls: type[Method]) -> dict:
    fields = {f.name for f in dataclasses.fields(cls.config_class)}
    params = {**CUT.get(cls.name, {}), **cls.conformance_overrides}
    if "progress" in fields:
        params["progress"] = False
    return params


def weights(backbone: Backbone) -> dict[str, dict[str, torch.Tensor]]:
    return {c: {k: v.detach().clone() for k, v in getattr(backbone, c).state_dict().items()}
            for c in COMPONENTS if getattr(backbone, c) is not None}


def changed_components(before: dict[str, dict[str, torch.Tensor]], backbone: Backbone) -> set[str]:
    return {c for c, state in before.items()  # a new tensor (an adapter attached to the component) is a change
            if any(k not in state or not torch.equal(state[k], v) for k, v in getattr(backbone, c).state_dict().items())}


def check_declared(method: Method, before: dict, edited: Backbone) -> set[str]:
    """The components ``method`` changed; fails if one of them is not in its ``edited_components``."""
    changed = changed_components(before, edited)
    undeclared = changed - set(method.edited_components)
    assert not undeclared, (f"{method.name} changed {sorted(undeclared)} but declares only "
                            f"{list(method.edited_components)} (the runner saves only declared components)")
    return changed


def images_of(backbone: Backbone) -> torch.Tensor:
    images, _ = generate(backbone, ["a photo of a cat", "a painting"], [3, 4], SAMPLER, batch_size=2, progress=False)
    return images


@pytest.fixture(scope="module")
def base(tiny_sd) -> Backbone:  # noqa: F811
    return load_backbone(str(tiny_sd))


@pytest.fixture(scope="module")
def fresh(tiny_sd) -> Backbone:  # noqa: F811
    """A second load of the folder from disk, for reloading saved edits (the runner copies it before use)."""
    return load_backbone(str(tiny_sd))


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory):
    """Stand-ins for every public prompt file a registered recipe reads, under the file's own name."""
    folder = tmp_path_factory.mktemp("prompt-files")
    for name in METHODS.names():
        for recipe in METHODS.get(name).recipes.values():
            spec = recipe.preserve_file
            if spec is None:
                continue
            path = folder / spec.name
            if spec.format == "lines":
                path.write_text("\n".join(STAND_IN) + "\n")
            else:
                sep = "\t" if spec.format == "tsv" else ","
                path.write_text(f"{spec.column}{sep}id\n" + "".join(f'"{p}"{sep}{i}\n' for i, p in enumerate(STAND_IN)))
    return folder


CASES = [(name, kind) for name in METHODS.names() for kind in KINDS]


@pytest.mark.parametrize(("name", "kind"), CASES, ids=[f"{n}-{k}" for n, k in CASES])
def test_method_conforms_on_stable_diffusion(base, fresh, tiny_sd, data_dir, tmp_path, name, kind):  # noqa: F811
    cls = METHODS.get(name)
    target = TARGETS[kind]
    spec = MethodSpec(name=name, params=cut(cls))
    config = RunConfig(model=str(tiny_sd), kind=kind, targets=[target], data_dir=str(data_dir), methods=[spec])
    unit, request = build_request(config, spec, cls(**spec.params), target, base)
    assert unit.recipe is not None and unit.recipe.kind == kind and request.kind == kind

    before = weights(base)
    store = RunStore(tmp_path / "run")
    edited, _ = edited_backbone(base, spec.row_name, spec, unit, request, store)
    assert changed_components(before, base) == set(), "apply changed the backbone it was given"

    changed = check_declared(unit, before, edited)
    if cls.family in ("closed-form", "fine-tuning"):
        assert changed, f"{name} changed none of its declared components {list(cls.edited_components)}"
    elif cls.family == "inference-time":
        assert edited.guidance_hooks, f"{name} attached no guidance hook"

    images = images_of(edited)
    assert torch.isfinite(images).all()

    # the saved edit (the runner's cache) onto a model loaded from disk again: the same images, bit for bit
    untouched = weights(fresh)
    reloaded, cost = edited_backbone(fresh, spec.row_name, spec, unit, request, store)
    if cls.family in ("closed-form", "fine-tuning"):
        assert cost == {}, "the saved edit was not reused"
    assert torch.equal(images_of(reloaded), images)
    assert changed_components(untouched, fresh) == set()

    # the fingerprint follows the recipe and the algorithm version
    fp = unit.fingerprint()
    recipe = unit.recipe
    variants = {
        "anchor": dataclasses.replace(recipe, anchor=(recipe.anchor or "") + " elsewhere"),
        "preserve": dataclasses.replace(recipe, preserve=(*(recipe.preserve or ()), "a teapot")),
        "target_prompts": dataclasses.replace(recipe, target_prompts=(*(recipe.target_prompts or ()), "a cat, 4k")),
    }
    for field, variant in variants.items():
        assert cls(**spec.params).with_recipe(variant).fingerprint() != fp, f"fingerprint ignores the recipe's {field}"
    free = [f.name for f in dataclasses.fields(cls.config_class) if f.name not in spec.params
            and isinstance(getattr(unit.config, f.name), (int, float)) and not isinstance(getattr(unit.config, f.name), bool)]
    if free:  # a recipe parameter the caller did not set reaches the config and the fingerprint
        field = free[0]
        changed_params = dataclasses.replace(recipe, params={**recipe.params, field: getattr(unit.config, field) + 1})
        other = cls(**spec.params).with_recipe(changed_params)
        assert getattr(other.config, field) == getattr(unit.config, field) + 1 and other.fingerprint() != fp
    bumped = type("Bumped", (cls,), {"algorithm_version": cls.algorithm_version + ".next"})
    assert bumped(**spec.params).with_recipe(recipe).fingerprint() != fp


# --------------------------------------------------------------------------- the check itself can fail
@dataclasses.dataclass
class _NoConfig(MethodConfig):
    pass


class _EditsTheTextEncoderButDeclaresTheUNet(Method):
    name = "undeclared-text-encoder"
    family = "closed-form"
    config_class = _NoConfig
    edited_components = ("unet",)

    def apply(self, backbone: Backbone, request: ErasureRequest) -> Backbone:
        edited = backbone.copy()
        with torch.no_grad():
            next(edited.text_encoder.parameters()).mul_(0.5)
        return edited


def test_a_method_that_changes_an_undeclared_component_fails_the_check(base):
    method = _EditsTheTextEncoderButDeclaresTheUNet()
    before = weights(base)
    edited = method.apply(base, ErasureRequest(targets=["cat"]))
    with pytest.raises(AssertionError, match=r"changed \['text_encoder'\] but declares only \['unet'\]"):
        check_declared(method, before, edited)
