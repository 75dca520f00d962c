"""The edit step: each (method, target) unit's request and its edited backbone.

:func:`build_request` resolves a unit's recipe (the target's concept kind, the config's and method's overrides)
into the method instance and :class:`~methods.base.ErasureRequest`; :func:`edited_backbone` applies the method
(or reloads its saved edit, ``edits/<row>__<target>/``) under the unit's lock; :class:`UnitEdits` keeps one
worker's current unit and records the edit's cost in the manifest.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from bench.backbone import Backbone, apply_saved_edit
from bench.config import ConfigError, RunConfig
from bench.locks import FileLock
from bench.memory import PeakMemory
from bench.run_checks import ResolvedRun
from bench.store import RunStore
from bench.targets import unit_concepts, unit_key


def infer_kind(backbone: Backbone, target: str) -> str:
    """A concept's kind as the backbone's world defines it (mini v1 or v2), else from its name on SD."""
    if backbone.kind == "mini":
        if backbone.world == "v2":
            from bench.worlds.v2.world import WorldV2 as World
        else:
            from bench.worlds.v1.world import MiniWorld as World
        try:
            return World.load().kind_of(target)
        except KeyError:
            return "object"
    return "nudity" if target.lower() in ("nudity", "naked", "nude") else "object"


def unit_kind(backbone: Backbone, target: str, concepts: list[str]) -> str:
    """The concept kind of a target: its concept's, or the one kind all the concepts of a unit share (ConfigError,
    one line, for a unit that mixes kinds: the recipe is per kind, so the run config must name one)."""
    kinds = list(dict.fromkeys(infer_kind(backbone, c) for c in concepts))
    if len(kinds) > 1:
        raise ConfigError(f"targets: {target!r} mixes concept kinds ({', '.join(kinds)}); give the run config a "
                          "'kind' (or --kind) for its recipe, or erase the kinds in separate units")
    return kinds[0]


def build_request(config: RunConfig, spec, method, target: str, backbone: Backbone):
    """The method instance and request of one (method, target) unit, with the recipe of the target's kind.

    A target ``A+B+C`` (:mod:`bench.targets`) is one unit: its request holds every concept, in that order.
    The kind is the config's ``kind`` or inferred from the target. On Stable Diffusion the method's recipe for
    that kind (or the nearest, :mod:`methods.recipes`) gives its prompt sets and config fields; on mini world v2
    the same recipe in the world's words (:mod:`bench.worlds.v2.recipe_words`), with the method's mini preset
    for the fields it lists; on mini world v1 the mini preset alone. The run config's ``anchor``/``preserve`` (when given) and the
    method's own ``anchor``/``preserve``/``target_prompts`` replace the recipe's; ``params`` win over the
    recipe's fields. The returned method carries the resolved recipe in its fingerprint (and so in the
    manifest and the saved edit). Raises ConfigError (one line) for a prompt file that cannot be found.
    """
    from bench.suites import SuiteError
    from methods.base import ErasureRequest
    from methods.recipes import materialise, override, recipe_for_model

    concepts = unit_concepts(target)  # several for a unit erased together (A+B+C): one request with all of them
    kind = config.kind or unit_kind(backbone, target, concepts)
    world = getattr(backbone, "world", None)
    recipe = recipe_for_model(method.recipes, kind, backbone.kind, world)
    if backbone.kind == "mini" and world == "v2":  # the paper recipe in the world's words
        from bench.worlds.v2.recipe_words import in_world_words

        try:
            recipe = in_world_words(recipe, concepts, prompt_params=method.prompt_params,
                                    evaluator_params=method.evaluator_params)
        except ValueError as exc:
            raise ConfigError(f"methods: {spec.row_name}: target {target}: {exc}") from None
    # None (the default) keeps the recipe's: a config written back from a manifest is the same run
    recipe = override(recipe, anchor=config.anchor, preserve=config.preserve, where="run config")
    recipe = override(recipe, anchor=spec.anchor, preserve=spec.preserve, target_prompts=spec.target_prompts,
                      where=f"run config: methods ({spec.row_name})")
    try:
        recipe = materialise(recipe, concepts, config.data_dir)
        unit = method.with_recipe(recipe)
    except (SuiteError, ValueError) as exc:
        raise ConfigError(f"methods: {spec.row_name}: target {target}: {exc}") from None
    request = ErasureRequest(
        targets=concepts, anchor=recipe.anchor or "", preserve=list(recipe.preserve or ()), kind=kind,
        seed=config.seed, target_prompts=None if recipe.target_prompts is None else list(recipe.target_prompts))
    return unit, request


def edited_backbone(base: Backbone, row: str, spec, method, request, store: RunStore,
                    log: logging.Logger | None = None) -> tuple[Backbone, dict] | None:
    """The backbone of one (method, target) unit: the method applied, or its saved edit reloaded.

    In order: a user-given ``edit:`` folder (``spec.edit``) is loaded; an inference-time method is set up
    (nothing to save; an auxiliary model such as ITD's SAE is trained in the unit's edit folder, once); an edit
    saved in the run's ``edits/<row>__<target>/`` is reloaded; else the method is applied and its edit saved
    there, under the unit's lock. Returns ``(backbone, cost)``: ``cost`` holds ``edit_seconds`` (and the
    method's stats) when the edit was computed, ``load_seconds`` for a given edit, and is empty for a reload
    (the computed cost is also saved in the edit's ``edit.json``: see :func:`saved_cost`). Returns None when
    another worker holds the unit's lock (it is computing the same edit).
    """
    if method.name == "none":
        return base, {}
    target = unit_key(request.targets)  # the unit's target as the run names it (one concept, or A+B+C)
    saved = store.edit_dir(row, target)
    components = tuple(getattr(method, "edited_components", ("unet",)))
    t0 = time.perf_counter()
    if spec.edit and hasattr(method, "in_folder"):  # an auxiliary model (ITD's SAE) reloaded from the edit
        edited = method.in_folder(spec.edit, reuse=True).apply(base, request)
        return edited, {"load_seconds": time.perf_counter() - t0}
    if spec.edit:
        edited = _attach_hooks(apply_saved_edit(base.copy(), spec.edit), method, request)
        return edited, {"load_seconds": time.perf_counter() - t0}
    if method.family == "inference-time" or not components:
        return _apply(_in_unit_folder(method, saved), base, request)
    if saved.exists() or saved.is_symlink():  # the run's own edit: whole, inside the run, of this method and target
        _verify_saved(saved, store, spec.name, target)
    if (saved / "edit.json").exists():
        return _attach_hooks(apply_saved_edit(base.copy(), saved), method, request), {}
    lock = FileLock(store.locks_dir / f"edit-{saved.name}.lock")
    if not lock.try_acquire():
        return None
    try:
        if (saved / "edit.json").exists():  # saved by another worker just before we took the lock
            return _attach_hooks(apply_saved_edit(base.copy(), saved), method, request), {}
        if log:
            log.info("computing edit %s", saved.name)
        edited, cost = _apply(method, base, request)
        edited.save_edit(saved, components=components, info={"method": method.fingerprint(), "cost": cost})
        if log:
            log.info("saved edit %s to %s", saved.name, saved)
        return edited, cost
    finally:
        lock.release()


def _verify_saved(saved: Path, store: RunStore, method: str, target: str) -> None:
    """DamagedFileError (one line, with the remedy) for a saved edit of the run that is damaged, that leads out of
    the run through a link, or that is another method's or another target's edit (issue 37). A folder without
    edit.json is a save that never finished: it is computed again (under the unit's lock)."""
    from bench.store import DamagedFileError, verify_edit

    if not saved.is_symlink() and not (saved / "edit.json").exists():
        return
    manifest = store.read_manifest() or {}
    try:
        verify_edit(saved, store.root, method=method, target=target, require_sums="store_format" in manifest)
    except DamagedFileError as exc:
        raise DamagedFileError(f"{exc}; delete {saved} and run the same command again to compute the edit "
                               "again") from None


def saved_cost(folder: Path) -> dict:
    """The cost figures saved in an edit folder's ``edit.json`` by the worker that computed it ({} if none)."""
    try:
        meta = json.loads((folder / "edit.json").read_text())
    except (OSError, ValueError):
        return {}
    cost = meta.get("cost") if isinstance(meta, dict) else None
    return dict(cost) if isinstance(cost, dict) else {}


def _apply(method, base: Backbone, request) -> tuple[Backbone, dict]:
    """``method.apply`` timed, with its peak memory; the result set up as a reloaded edit is (eval, no grads)."""
    method.check_request(request)
    t0 = time.perf_counter()
    with PeakMemory(base.device) as mem:
        edited = method.apply(base, request)
    for module in (edited.unet, edited.text_encoder):
        module.eval().requires_grad_(False)
    return edited, {"edit_seconds": time.perf_counter() - t0, "peak_memory_mb": mem.peak_mb,
                    **getattr(method, "stats", {})}


def _in_unit_folder(method, folder: Path):
    """A method with an auxiliary model (``in_folder``: ITD's sparse autoencoder) keeps it in the unit's edit
    folder: trained there once (resumably), found again by every worker and by a run that reuses the edit."""
    return method.in_folder(folder) if hasattr(method, "in_folder") else method


def _attach_hooks(backbone: Backbone, method, request) -> Backbone:
    hooks = getattr(method, "guidance_hooks_for", None)
    if hooks is not None:
        backbone.guidance_hooks = list(hooks(request, backbone))
    return backbone


class UnitEdits:
    """The edited backbone of each (method, target) unit, for one worker.

    A saved edit (``edits/<row>__<target>/``) is loaded. A missing one is computed by the worker that
    takes its lock and saved; a worker that finds the lock taken gets ``None`` and does other work
    meanwhile. Inference-time methods (hooks, no weights to save) are set up by each worker.
    The last unit's backbone is kept, so consecutive parts of a unit load it once.
    """

    def __init__(self, base: Backbone, base_fp: str, resolved: ResolvedRun, store: RunStore, log: logging.Logger,
                 units: dict[tuple[str, str], tuple]):
        self.base, self.base_fp, self.resolved, self.store, self.log = base, base_fp, resolved, store, log
        self.units = units  # (row, target) -> (method with the unit's recipe, request): build_request
        self.current: tuple[tuple[str, str], Backbone, str] | None = None
        self.busy_seconds = 0.0

    def get(self, row: str, target: str) -> tuple[Backbone, str] | None:
        if self.current is not None and self.current[0] == (row, target):
            return self.current[1], self.current[2]
        spec = next(m[1] for m in self.resolved.methods if m[0] == row)
        method, request = self.units[(row, target)]
        if method.name == "none":
            return self.base, self.base_fp
        key = f"{row}__{target}"
        t0 = time.perf_counter()
        result = edited_backbone(self.base, row, spec, method, request, self.store, self.log)
        if result is None:  # another worker holds the unit's lock
            return None
        edited, cost = result
        self.busy_seconds += time.perf_counter() - t0
        fingerprint = edited.fingerprint()
        # a reloaded edit: its cost from edit.json, in case the worker that computed it was killed before the
        # manifest entry below
        cost = cost or saved_cost(self.store.edit_dir(row, target))
        if cost and key not in (self.store.read_manifest() or {}).get("edits", {}):
            # the first worker's figures
            self.store.update_manifest(edits={key: {"method": row, "target": target, "fingerprint": fingerprint, **cost}})
        self.current = ((row, target), edited, fingerprint)
        return edited, fingerprint
