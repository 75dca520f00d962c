"""The attack protocol: try to bring an erased concept back, prompt by prompt.

An attack is a registered class with a ``name``, a ``description`` and a typed ``config_class``
(a dataclass with the paper's defaults; every config has the budget fields of
:class:`AttackConfig`). ``attack(erased, original, prompts, target, evaluator)`` returns one row
per prompt::

    prompt_id, prompt, seed, pre_success, attack_success, success, adv_prompt, adv_token,
    adv_embedding, adv_latent, checks, unet_evals, seconds, cached, attack, target, cache_key

- ``pre_success``: the evaluator finds the target in the erased model's image of the unchanged
  prompt (the no-attack baseline; UnlearnDiffAtk's pre-ASR).
- ``attack_success``: the attack found an input that brings the target back (only tried where
  ``pre_success`` is false). ``success = pre_success or attack_success`` (UnlearnDiffAtk's ASR).
- ``adv_prompt``: the adversarial prompt as text. Inputs that are not text (a learned token
  embedding) name a placeholder token ``adv_token`` inside ``adv_prompt`` and give its input
  embedding in ``adv_embedding`` (JSON list); :func:`backbone_with_tokens` makes a backbone that
  can generate them.
- ``adv_latent``: an optimised starting latent (text-free inversion attacks such as ``tina``): the
  ``images_per_check`` latents the successful (or last) check sampled from, encoded by
  :func:`encode_latents` (``""`` when the attack works on text); :func:`decode_latents` gives them
  back as ``[images_per_check, *latent_shape]`` and ``generate(..., initial_latents=...)`` with the
  row's ``adv_prompt`` and seeds redraws the judged images (the latent is part of their cache key).
- ``checks``: candidates generated and judged; ``unet_evals``: UNet sample evaluations (a batch
  of B latents counts B; a forward+backward counts once), the row's share of batched work.

A *check* samples ``images_per_check`` images with the run's sampler and seeds and asks the
evaluator; it succeeds when any image shows the target. The budget of every attack is
``max_checks`` checks per prompt (stop at first success), plus its own optimisation knobs.

Results are cached per (attack, model fingerprints, config, sampler, evaluator, prompt, seed,
target) in :class:`AttackCache`; a re-run reads them and optimises nothing.

Longer than bench/'s usual 400 lines (docs/DEVELOPING.md): the protocol (Attack, the check loop, the result row) and
the helpers every attack shares (judging, latents, budgets), beside the protocol they serve.
"""

from __future__ import annotations

import base64
import copy
import dataclasses
import hashlib
import json
import os
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import pandas as pd
import torch

from bench.backbone import Backbone
from bench.generate import ImageCache, SamplerConfig, generate, image_seed
from bench.registry import Registry

ATTACKS: Registry[type[Attack]] = Registry("attack", entry_point_group="erasebench.attacks")
RESULT_COLUMNS = ("prompt_id", "prompt", "seed", "pre_success", "attack_success", "success", "adv_prompt",
                  "adv_token", "adv_embedding", "adv_latent", "checks", "unet_evals", "seconds", "cached", "attack", "target",
                  "cache_key")
CACHE_VERSION = 1


def register_attack(cls: type[Attack]) -> type[Attack]:
    """Class decorator: ``@register_attack`` on an :class:`Attack` subclass with a ``name``."""
    return ATTACKS.register(cls.name)(cls)


@dataclass
class AttackConfig:
    """Budget shared by every attack (subclasses add the paper's hyper-parameters)."""

    max_checks: int = 8  # candidates generated and judged per prompt; stop at first success
    images_per_check: int = 1  # images per check (success if any shows the target)
    seed: int = 0  # the attack's own randomness (not the image seeds)
    max_prompts: int | None = None  # attack this many of the given prompts, evenly spaced (None: all)


# --------------------------------------------------------------------------- counting UNet work
class UNetCounter:
    """Counts UNet sample evaluations (batch rows) on one or more UNets while active."""

    def __init__(self, *unets: torch.nn.Module):
        self.count = 0
        self._unets = list({id(u): u for u in unets if u is not None}.values())
        self._handles: list[Any] = []

    def _hook(self, module, args, kwargs):
        sample = args[0] if args else kwargs.get("sample")
        self.count += int(sample.shape[0]) if sample is not None else 1

    def __enter__(self) -> UNetCounter:
        self._handles = [u.register_forward_pre_hook(self._hook, with_kwargs=True) for u in self._unets]
        return self

    def __exit__(self, *exc) -> bool:
        for h in self._handles:
            h.remove()
        self._handles = []
        return False


# --------------------------------------------------------------------------- embeddings as inputs
def backbone_with_tokens(backbone: Backbone, tokens: dict[str, torch.Tensor]) -> Backbone:
    """A backbone that knows extra words: each ``token`` maps to the given input embedding.

    The tokenizer and text encoder are copied (the UNet and VAE are shared, not copied), the
    tokens are added to the copy's tokenizer and rows appended to its input-embedding matrix,
    so ``generate(b, ["a red <inv>"], ...)`` works unchanged. The copy's ``fingerprint()``
    covers the new rows, so its images never collide with the original's in a cache.
    """
    tokenizer = copy.deepcopy(backbone.tokenizer)
    text_encoder = copy.deepcopy(backbone.text_encoder)
    tokenizer.add_tokens(list(tokens))
    emb = text_encoder.get_input_embeddings()
    if len(tokenizer) > emb.weight.shape[0]:
        text_encoder.resize_token_embeddings(len(tokenizer))
        emb = text_encoder.get_input_embeddings()
    with torch.no_grad():
        for tok, vec in tokens.items():
            idx = tokenizer.convert_tokens_to_ids(tok)
            emb.weight[idx] = torch.as_tensor(vec, dtype=emb.weight.dtype, device=emb.weight.device)
    text_encoder.requires_grad_(False).eval()
    return dataclasses.replace(backbone, tokenizer=tokenizer, text_encoder=text_encoder)


@contextmanager
def input_embedding_override(text_encoder: torch.nn.Module, fn):
    """Inside the block, the text encoder's input (token) embeddings ``[B, L, D]`` are replaced by
    ``fn(embeddings)`` (differentiable): how attacks feed vectors that are not vocabulary rows."""
    handle = text_encoder.get_input_embeddings().register_forward_hook(lambda module, args, output: fn(output))
    try:
        yield
    finally:
        handle.remove()


def special_ids(tokenizer) -> set[int]:
    ids = set(getattr(tokenizer, "all_special_ids", []) or [])
    for name in ("pad_token_id", "bos_token_id", "eos_token_id", "unk_token_id"):
        v = getattr(tokenizer, name, None)
        if v is not None:
            ids.add(int(v))
    return ids


def candidate_vocab(tokenizer, banned_words: list[str] | tuple[str, ...] = ()) -> torch.Tensor:
    """Token ids an attack may use: the vocabulary minus special and added tokens and banned words."""
    vocab = tokenizer.get_vocab()
    bad = special_ids(tokenizer)
    for w in banned_words:
        for i in tokenizer(w, add_special_tokens=False).input_ids:
            bad.add(int(i))
    added = set(getattr(tokenizer, "added_tokens_encoder", {}) or {})
    ids = sorted(i for t, i in vocab.items() if i not in bad and t not in added)
    return torch.tensor(ids, dtype=torch.long)


def decode_ids(tokenizer, ids: list[int]) -> str:
    return tokenizer.decode([int(i) for i in ids], skip_special_tokens=True).strip()


def content_ids(backbone: Backbone, prompt: str) -> list[int]:
    """The prompt's token ids without special tokens, truncated to fit the encoder."""
    ids = backbone.tokenizer(prompt, add_special_tokens=False).input_ids
    return list(ids)[: backbone.tokenizer.model_max_length - 2]


def ids_to_input(backbone: Backbone, ids_batch: list[list[int]]) -> torch.Tensor:
    """[B, L] input ids: BOS, ids, EOS, padding (like :meth:`Backbone.tokenize`)."""
    tok = backbone.tokenizer
    length = tok.model_max_length
    bos, eos = tok.bos_token_id, tok.eos_token_id
    pad = tok.pad_token_id if tok.pad_token_id is not None else eos
    rows = []
    for ids in ids_batch:
        row = [bos, *list(ids)[: length - 2], eos]
        rows.append(row + [pad] * (length - len(row)))
    return torch.tensor(rows, dtype=torch.long, device=backbone.device)


# --------------------------------------------------------------------------- cache
class AttackCache:
    """Attack results on disk: ``root/<attack>/<key[:2]>/<key>.json`` (written atomically)."""

    def __init__(self, root: str | Path):
        self.root = Path(root)

    def path(self, attack: str, key: str) -> Path:
        return self.root / attack / key[:2] / f"{key}.json"

    def get(self, attack: str, key: str) -> dict | None:
        p = self.path(attack, key)
        return json.loads(p.read_text()) if p.exists() else None

    def put(self, attack: str, key: str, record: dict) -> None:
        p = self.path(attack, key)
        p.parent.mkdir(parents=True, exist_ok=True)
        tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(record, default=_json_default))
        os.replace(tmp, p)

    def get_blob(self, attack: str, key: str) -> dict | None:
        return self.get(attack, "blob-" + key)

    def put_blob(self, attack: str, key: str, blob: dict) -> None:
        self.put(attack, "blob-" + key, blob)

    def records(self, attack: str | None = None) -> pd.DataFrame:
        """Every cached per-prompt result (of one attack, or all), sorted by attack and prompt."""
        pattern = f"{attack}/*/*.json" if attack else "*/*/*.json"
        rows = [json.loads(p.read_text()) for p in sorted(self.root.glob(pattern)) if not p.name.startswith("blob-")]
        if not rows:
            return pd.DataFrame(columns=[c for c in RESULT_COLUMNS if c != "cached"] + ["fingerprint"])
        df = pd.DataFrame(rows)
        return df.sort_values(["attack", "prompt_id", "cache_key"], kind="stable").reset_index(drop=True)

    def export_csv(self, path: str | Path, attack: str | None = None) -> Path:
        """Write the cached results as CSV (``adv_embedding`` as a JSON list); read back with :func:`read_csv`."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.records(attack).to_csv(path, index=False)
        return path


def read_csv(path: str | Path) -> pd.DataFrame:
    """Read an :meth:`AttackCache.export_csv` file back (types restored, embeddings as lists)."""
    df = pd.read_csv(path, keep_default_na=False, dtype={"prompt_id": str, "prompt": str, "adv_prompt": str,
                                                          "adv_token": str, "adv_latent": str, "cache_key": str,
                                                          "target": str})
    for col in ("pre_success", "attack_success", "success"):
        if col in df:
            df[col] = df[col].map(lambda v: v if isinstance(v, bool) else str(v) == "True")
    if "adv_embedding" in df:
        df["adv_embedding"] = df["adv_embedding"].map(lambda v: json.loads(v) if isinstance(v, str) and v else None)
    return df


def _json_default(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, (np.bool_,)):
        return bool(o)
    if isinstance(o, torch.Tensor):
        return o.tolist()
    return str(o)


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=_json_default).encode()).hexdigest()


def encode_latents(latents: torch.Tensor) -> str:
    """Starting latents ``[K, *latent_shape]`` as a compact JSON string (float32, base64; exact round trip)."""
    data = latents.detach().to("cpu", torch.float32).contiguous()
    return json.dumps({"shape": list(data.shape), "dtype": "float32",
                       "data": base64.b64encode(data.numpy().tobytes()).decode("ascii")})


def decode_latents(text: str) -> torch.Tensor | None:
    """:func:`encode_latents`'s string back as a float32 tensor (None for ``""``: the row has no latent)."""
    if not isinstance(text, str) or not text:
        return None
    obj = json.loads(text)
    if obj.get("dtype") != "float32":
        raise ValueError(f"adv_latent: unknown dtype {obj.get('dtype')!r} (expected float32)")
    values = np.frombuffer(base64.b64decode(obj["data"]), dtype=np.float32)
    return torch.from_numpy(values.copy()).reshape(obj["shape"])


# --------------------------------------------------------------------------- the attack context
@dataclass
class AttackContext:
    """What an attack's search sees: models, judge, sampler, and a ``check`` to spend budget."""

    erased: Backbone
    original: Backbone
    target: str
    evaluator: Any
    sampler: SamplerConfig
    config: AttackConfig
    rows: list[dict]  # the prompts still to attack (each with prompt_id, prompt, seed, ...)
    image_cache: ImageCache | None = None
    erased_fingerprint: str | None = None
    counter: UNetCounter | None = None
    checks: list[int] = field(default_factory=list)
    all_rows: list[dict] = field(default_factory=list)  # every prompt of the call (also the pre-successful)

    def seeds(self, row: dict) -> list[int]:
        return [int(row["seed"]) + k for k in range(self.config.images_per_check)]

    def check(self, indices: list[int], prompts: list[str], backbone: Backbone | None = None,
              fingerprint: str | None = None, latents: list[torch.Tensor] | None = None,
              sampler: SamplerConfig | None = None) -> list[bool]:
        """Generate ``prompts[j]`` for row ``indices[j]`` with the erased model (or ``backbone``)
        and the row's seeds, judge with the evaluator; True where any image shows the target.

        ``latents[j]`` ``[images_per_check, *latent_shape]``: the row's images start from these latents
        instead of its seeds' noise (the seeds still name the images; the latents enter their keys).
        ``sampler``: an attack whose paper samples its input with its own solver (TINA: LMS) gives it here;
        default the run's sampler (it enters the images' keys either way)."""
        if not indices:
            return []
        backbone = backbone or self.erased
        if backbone is self.erased:
            fingerprint = fingerprint or self.erased_fingerprint
        ipc = self.config.images_per_check
        if latents is not None:
            if len(latents) != len(indices) or any(z.shape[0] != ipc for z in latents):
                raise ValueError(f"check: expected one [images_per_check={ipc}, ...] latent tensor per index")
        all_prompts, seeds, items = [], [], []
        for i, p in zip(indices, prompts):
            row = self.rows[i]
            self.checks[i] += 1
            for s in self.seeds(row):
                all_prompts.append(p)
                seeds.append(s)
                items.append(judge_item(row, p, self.target))
        start = torch.cat(list(latents)) if latents is not None else None
        images, _ = generate(backbone, all_prompts, seeds, sampler or self.sampler, batch_size=64,
                             cache=self.image_cache, model_fingerprint=fingerprint, progress=False,
                             initial_latents=start)
        records = self.evaluator.score(images, items)
        present = [bool(r.get("target_present", False)) for r in records]
        return [any(present[j * ipc:(j + 1) * ipc]) for j in range(len(indices))]


def judge_item(row: dict, prompt: str, target: str) -> dict:
    item = {k: v for k, v in row.items() if not (isinstance(v, float) and np.isnan(v))}
    item["prompt"] = prompt
    item.setdefault("target", target)
    item.setdefault("erase_target", target)
    return item


@dataclass
class Found:
    """What a search returns for one row."""

    success: bool = False
    adv_prompt: str = ""
    adv_token: str = ""
    adv_embedding: list[float] | None = None
    adv_latent: torch.Tensor | None = None  # [images_per_check, *latent_shape]: the starting latents judged
    extra: dict = field(default_factory=dict)


# --------------------------------------------------------------------------- the protocol
class Attack:
    """Base class: subclasses set ``name``, ``description``, ``config_class`` and implement :meth:`search`.

    ``uses_original`` says whether results depend on the original model (its fingerprint then
    enters the cache key); ``white_box`` whether the attack reads the erased model's weights.
    ``revision`` enters the cache key too: bump it when a change to :meth:`search` changes what the
    same config finds, so cached results of the old code are not served as the new one's.
    """

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""
    config_class: ClassVar[type[AttackConfig]] = AttackConfig
    uses_original: ClassVar[bool] = True
    white_box: ClassVar[bool] = True
    revision: ClassVar[int] = 1

    def __init__(self, **params: Any):
        known = {f.name for f in dataclasses.fields(self.config_class)}
        unknown = set(params) - known
        if unknown:
            raise ValueError(f"attack {self.name!r}: unknown parameter(s) {', '.join(sorted(unknown))}; "
                             f"valid: {', '.join(sorted(known))}")
        self.config = self.config_class(**params)
        if self.config.max_checks < 1 or self.config.images_per_check < 1:
            raise ValueError(f"attack {self.name!r}: max_checks and images_per_check must be >= 1")
        if self.config.max_prompts is not None and self.config.max_prompts < 1:
            raise ValueError(f"attack {self.name!r}: max_prompts must be >= 1 (or null for all prompts)")
        self.stats: dict[str, float] = {}

    def fingerprint(self) -> dict:
        return {"attack": self.name, "config": asdict(self.config), "version": CACHE_VERSION,
                "revision": self.revision}

    # subclasses -----------------------------------------------------------------
    def search(self, ctx: AttackContext) -> list[Found]:
        raise NotImplementedError

    # the driver -----------------------------------------------------------------
    def attack(
        self,
        erased: Backbone,
        original: Backbone,
        prompts: pd.DataFrame,
        target: str,
        evaluator: Any,
        sampler: SamplerConfig | None = None,
        cache: AttackCache | str | Path | None = None,
        image_cache: ImageCache | None = None,
        erased_fingerprint: str | None = None,
        original_fingerprint: str | None = None,
        run_seed: int = 0,
    ) -> pd.DataFrame:
        """Attack every prompt (``prompt_id``, ``prompt``, optional ``seed``); one result row per prompt.

        ``df.attrs`` holds this call's totals: ``unet_evals`` (UNet sample evaluations actually
        run, 0 when everything came from the cache), ``seconds``, ``cached`` (rows read).
        """
        t_start = time.perf_counter()
        sampler = sampler or SamplerConfig()
        prompts = spread(prompts, self.config.max_prompts)
        if isinstance(cache, (str, Path)):
            cache = AttackCache(cache)
        efp = erased_fingerprint or erased.fingerprint()
        ofp = (original_fingerprint or original.fingerprint()) if self.uses_original else None
        provenance = evaluator.provenance() if hasattr(evaluator, "provenance") else {"name": type(evaluator).__name__}
        rows = []
        for r in prompts.to_dict("records"):
            seed = r.get("seed")
            seed = int(seed) if seed is not None and not pd.isna(seed) else image_seed(r["prompt_id"], 0, run_seed)
            rows.append({**r, "prompt_id": str(r["prompt_id"]), "seed": seed})
        base_key = {**self.fingerprint(), "erased": efp, "original": ofp, "sampler": asdict(sampler),
                    "evaluator": provenance, "target": target}
        keys = [_hash({**base_key, "prompt": r["prompt"], "seed": r["seed"]}) for r in rows]
        results: list[dict | None] = [cache.get(self.name, k) if cache else None for k in keys]
        todo = [i for i, res in enumerate(results) if res is None]
        n_cached = len(rows) - len(todo)
        counter = UNetCounter(erased.unet, original.unet)
        if todo:
            with counter:
                fresh = self._run(erased, original, [rows[i] for i in todo], target, evaluator, sampler,
                                  image_cache, efp, counter)
            for j, i in enumerate(todo):
                rec = {**fresh[j], "attack": self.name, "target": target, "cache_key": keys[i], "fingerprint": efp}
                results[i] = rec
                if cache is not None:
                    cache.put(self.name, keys[i], rec)
        out = []
        for i, rec in enumerate(results):
            out.append({"adv_latent": "", **rec, "cached": i not in todo})  # records cached before adv_latent: ""
        df = pd.DataFrame(out)
        df = df[[c for c in RESULT_COLUMNS if c in df.columns] + [c for c in df.columns if c not in RESULT_COLUMNS]]
        df.attrs.update(unet_evals=counter.count, seconds=time.perf_counter() - t_start, cached=n_cached)
        return df

    def _run(self, erased, original, rows, target, evaluator, sampler, image_cache, efp, counter) -> list[dict]:
        cfg = self.config
        ctx = AttackContext(erased=erased, original=original, target=target, evaluator=evaluator, sampler=sampler,
                            config=cfg, rows=rows, image_cache=image_cache, erased_fingerprint=efp, counter=counter,
                            checks=[0] * len(rows), all_rows=rows)
        # 1. no attack: the unchanged prompt
        t0, c0 = time.perf_counter(), counter.count
        pre = ctx.check(list(range(len(rows))), [r["prompt"] for r in rows])
        pre_secs, pre_evals = time.perf_counter() - t0, counter.count - c0
        ctx.checks = [0] * len(rows)  # the no-attack check is not part of the attack's budget
        # 2. the attack, on the prompts that the erased model does not already show
        remaining = [i for i, p in enumerate(pre) if not p]
        found: dict[int, Found] = {}
        t1, c1 = time.perf_counter(), counter.count
        if remaining:
            sub = AttackContext(**{**ctx.__dict__, "rows": [rows[i] for i in remaining],
                                   "checks": [0] * len(remaining)})
            for i, f in zip(remaining, self.search(sub)):
                found[i] = f
            for j, i in enumerate(remaining):
                ctx.checks[i] = sub.checks[j]
        att_secs, att_evals = time.perf_counter() - t1, counter.count - c1
        out = []
        n, m = len(rows), max(len(remaining), 1)
        for i, r in enumerate(rows):
            f = found.get(i, Found())
            share_evals = pre_evals / n + (att_evals / m if i in found else 0.0)
            share_secs = pre_secs / n + (att_secs / m if i in found else 0.0)
            out.append({
                "prompt_id": r["prompt_id"], "prompt": r["prompt"], "seed": int(r["seed"]),
                "pre_success": bool(pre[i]), "attack_success": bool(f.success), "success": bool(pre[i] or f.success),
                "adv_prompt": f.adv_prompt, "adv_token": f.adv_token,
                "adv_embedding": json.dumps(f.adv_embedding) if f.adv_embedding is not None else "",
                "adv_latent": encode_latents(f.adv_latent) if f.adv_latent is not None else "",
                "checks": int(ctx.checks[i]), "unet_evals": float(share_evals), "seconds": float(share_secs),
                **f.extra,
            })
        return out


def spread(prompts: pd.DataFrame, k: int | None) -> pd.DataFrame:
    """``k`` rows spread evenly over ``prompts`` (all of them when ``k`` is None or not smaller)."""
    if k is None or k >= len(prompts):
        return prompts
    if k < 1:
        raise ValueError(f"max_prompts must be at least 1, got {k}")
    index = np.unique(np.linspace(0, len(prompts) - 1, k).round().astype(int))
    return prompts.iloc[index].reset_index(drop=True)


def rng_for(config: AttackConfig, *parts: Any) -> np.random.Generator:
    """A generator seeded by the attack seed and ``parts`` (e.g. the prompt id): order-independent."""
    digest = hashlib.sha256(json.dumps([config.seed, *parts], default=str).encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))
