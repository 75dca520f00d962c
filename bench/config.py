"""The run config (YAML), validated by a typed schema that reports every error at once.

    model: mini-v2              # 'mini-v2', 'mini' (v1), a local diffusers folder, or a hub id; default: the suite's
    seed: 0
    sampler: {name: ddim, steps: 25, guidance: 5.0}
    methods:
      - {name: none}
      - {name: cad-erase, params: {ratio: 0.05}}
      - {name: uce, label: uce-strong, params: {erase_scale: 2.0}}
      - {name: esd-x, edit: edits/esd-x-circle}    # a saved edit: no retraining
    targets: [circle]           # each target is a unit of the run; A+B+C erases A, B and C together
    suite: mini-v2-quick        # default; its file declares the model it is for (mini-v2)
    tier: standard
    images_per_prompt: 2
    batch_size: 64
    device: cpu
    dtype: float32
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator


class ConfigError(ValueError):
    """An invalid run config; the message lists every problem, one per line."""


# Every model rejects NaN and infinities: no number in a run config means anything as one.
STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)

# Bounds (issue 37): a config is checked whole before anything is written or a model loads; past these a run
# could not finish (images_per_prompt: 1e30) or its files could not be named (a 5,000-character label).
MAX_NAME = 100  # characters of a method name, label or target: part of file names (method__target__task.parquet)
MAX_TEXT = 1000  # characters of any other string (a prompt, a path)
MAX_DEPTH = 16  # nesting of lists and mappings in a config (method and attack params)
MAX_ITEMS = 10_000  # items of one list or mapping
MAX_IMAGES_PER_PROMPT = 10_000
MAX_BATCH = 4096
INT64 = 2**63 - 1


def _one_line_name(v: str | None, what: str, limit: int = MAX_NAME) -> str | None:
    if v is None:
        return v
    if not v.strip():
        raise ValueError(f"{what} is empty")
    if len(v) > limit:
        raise ValueError(f"{what} is {len(v)} characters long; at most {limit}")
    if any(not ch.isprintable() for ch in v):
        raise ValueError(f"{what} {v[:40]!r} holds a control character (a newline, a tab, NUL...); write it on one "
                         "line")
    return v


def value_problems(value: Any, where: str, depth: int = 0) -> list[str]:
    """Problems of a free-form config value (method and attack ``params``): NaN or infinite numbers, strings with
    control characters or longer than :data:`MAX_TEXT`, integers beyond 64 bits, nesting deeper than
    :data:`MAX_DEPTH`, more than :data:`MAX_ITEMS` items. Iterative over the levels it accepts."""
    import math

    if depth > MAX_DEPTH:
        return [f"{where}: nested more than {MAX_DEPTH} levels deep"]
    if isinstance(value, bool) or value is None:
        return []
    if isinstance(value, float):
        return [] if math.isfinite(value) else [f"{where}={value}: not a finite number"]
    if isinstance(value, int):
        return [] if abs(value) <= INT64 else [f"{where}: {value} is beyond the 64-bit integers"]
    if isinstance(value, str):
        if len(value) > MAX_TEXT:
            return [f"{where}: a string of {len(value)} characters; at most {MAX_TEXT}"]
        return [f"{where}: holds a control character"] if any(not ch.isprintable() for ch in value) else []
    if isinstance(value, (list, tuple, dict)):
        if len(value) > MAX_ITEMS:
            return [f"{where}: {len(value)} items; at most {MAX_ITEMS}"]
        items = value.items() if isinstance(value, dict) else enumerate(value)
        out = []
        for k, v in items:
            if isinstance(value, dict) and not isinstance(k, str):
                out.append(f"{where}: key {k!r} is not a string")
                continue
            out += value_problems(v, f"{where}[{k}]" if isinstance(k, int) else f"{where}.{k}", depth + 1)
        return out
    return [f"{where}: a {type(value).__name__} is not a config value"]


def _free_form(v: dict[str, Any], what: str) -> dict[str, Any]:
    problems = value_problems(v, what)
    if problems:
        raise ValueError("; ".join(problems[:5]) + (f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""))
    return v


def _text(v: str | None, what: str) -> str | None:
    return v if v is None else _one_line_name(v, what, MAX_TEXT)


class SamplerSpec(BaseModel):
    model_config = STRICT
    name: Literal["ddim", "dpm", "default"] = "ddim"
    steps: int = Field(25, ge=1, le=1000)
    guidance: float = Field(5.0, ge=0.0, le=1000.0)
    eta: float = Field(0.0, ge=0.0, le=1.0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "fp32"  # the UNet's precision while sampling
    # the UNet's attention while sampling: auto = the measured choice for the device (bench.backbone)
    attention: Literal["auto", "sdpa", "math"] = "auto"
    # the UNet's convolution weights' layout while sampling: auto = the measured choice for the device (bench.backbone)
    memory_format: Literal["auto", "contiguous", "channels_last"] = "auto"
    # bf16/fp16 sampling: the UNet's and VAE's weights cast once ("cast") or fp32 under autocast ("fp32");
    # auto = cast for bf16, and for fp16 on a GPU (bench.generate.SamplerConfig.weights)
    weights: Literal["auto", "fp32", "cast"] = "auto"


class _NamedWithParams(BaseModel):
    """A registry name with free-form params (a method or an attack of the config): both bounded the same way."""

    model_config = STRICT
    name: str
    params: dict[str, Any] = Field(default_factory=dict)

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        return _one_line_name(v, "name")

    @field_validator("params")
    @classmethod
    def _params(cls, v: dict[str, Any]) -> dict[str, Any]:
        return _free_form(v, "params")


class MethodSpec(_NamedWithParams):
    label: str | None = None  # the row name when one method appears with several settings
    edit: str | None = None  # a folder saved by Backbone.save_edit: load it instead of applying the method
    # the recipe's prompt sets replaced for this method ("{concept}" is the target); None: the recipe's
    anchor: str | None = None
    preserve: list[str] | None = None
    target_prompts: list[str] | None = None

    @field_validator("label")
    @classmethod
    def _label(cls, v: str | None) -> str | None:
        return _one_line_name(v, "label")

    @field_validator("edit", "anchor")
    @classmethod
    def _strings(cls, v: str | None) -> str | None:
        return v if v is None or v == "" else _text(v, "value")

    @field_validator("preserve", "target_prompts")
    @classmethod
    def _prompt_lists(cls, v: list[str] | None) -> list[str] | None:
        for p in v or []:
            if p:
                _text(p, "prompt")
        if v is not None and len(v) > MAX_ITEMS:
            raise ValueError(f"{len(v)} prompts; at most {MAX_ITEMS}")
        return v

    @property
    def row_name(self) -> str:
        return self.label or self.name


class AttackSpec(_NamedWithParams):
    pass


# The default run (issue 33 item 6): mini world v2's quick suite. A config that names a suite and no model runs the
# model the suite's file declares (mini-quick -> mini, v1), else DEFAULT_MODEL.
DEFAULT_SUITE = "mini-v2-quick"
DEFAULT_MODEL = "mini-v2"
# The default run's methods: CAD-Erase and the baselines erasebench was founded to compare it with, the CAD paper's
# own (ESD, UCE, RECE, ConceptPrune: shared/reference/cad.md section 4.7) and SLD, MACE and AdvUnlearn, with the
# unedited row first. Every registered erasing method (28) took 539 s on a 2-core AVX2-only EPYC against the default
# run's 300 s budget (default_run_cpu_avx2_mini_v2_quick.json); these took 128 s on a 2-core Zen 4 held to AVX2 kernels
# and 99 s with its native bf16 (benchmarks/results/default_run_cpu_*_v2_default.json).
# `methods: [all]` (`--methods all`) runs every registered erasing method.
DEFAULT_METHODS = ("none", "cad-erase", "esd-u", "esd-x", "uce", "rece", "conceptprune", "sld", "mace-cfr",
                   "advunlearn")
ALL_METHODS = "all"  # a methods entry that stands for every registered erasing method (the unedited row first)


class RunConfig(BaseModel):
    model_config = STRICT
    model: str = DEFAULT_MODEL  # filled from the suite's declared model when the config names none (below)
    seed: int = Field(0, ge=-INT64, le=INT64)
    sampler: SamplerSpec | None = None  # default: the suite's sampler
    # default: DEFAULT_METHODS with their defaults; an entry {name: all} stands for every registered erasing method
    methods: list[MethodSpec] | None = Field(None, min_length=1, max_length=1000)
    targets: list[str] = Field(default_factory=lambda: ["circle"], min_length=1, max_length=1000)
    kind: Literal["object", "style", "colour", "nudity", "identity"] | None = None
    anchor: str | None = None  # None: the method's recipe (or "", the empty prompt, where it has none)
    preserve: list[str] | None = None  # None: the method's recipe (or nothing to preserve)
    suite: str = DEFAULT_SUITE
    tier: str | None = None
    images_per_prompt: int | None = Field(None, ge=1, le=MAX_IMAGES_PER_PROMPT)
    batch_size: int = Field(64, ge=1, le=MAX_BATCH)
    device: str = "cpu"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    attacks: list[AttackSpec] | None = Field(None, max_length=1000)  # default: the suite's attacks
    cache_dir: str | None = None
    data_dir: str | None = None  # local copies of prompt files (offline use)

    @model_validator(mode="before")
    @classmethod
    def _model_of_the_suite(cls, data: Any) -> Any:
        """No ``model``: the one the suite's file declares (``suite: mini-quick`` alone runs v1, as it always did), or
        for a file that declares none the mini world its evaluator reads (``bench.suites.declared_model``). A suite
        with neither (the Stable Diffusion suites) needs the config to name the model: before 2026-12-07 it ran
        mini-v2 on the suite's prompts (I2P prompts scored by NudeNet on the mini world) without a word."""
        if isinstance(data, dict) and "model" not in data:
            from bench.suites import declared_model

            suite = data.get("suite", DEFAULT_SUITE)
            model = declared_model(suite) if isinstance(suite, str) else None
            if model == "":
                raise ValueError(
                    f"suite {suite!r} declares no model and its evaluators read no mini world: name the model to "
                    "evaluate with 'model:' (a local diffusers folder, or a hub id such as "
                    "CompVis/stable-diffusion-v1-4, the model of the ESD, UCE and CAD papers' tables), or 'mini-v2' "
                    "to run its prompts on the mini world")
            data = {**data, "model": model or DEFAULT_MODEL}
        return data

    @field_validator("model", "suite", "tier", "cache_dir", "data_dir", "anchor")
    @classmethod
    def _strings(cls, v: str | None) -> str | None:
        return v if v is None or v == "" else _text(v, "value")

    @field_validator("preserve")
    @classmethod
    def _prompt_list(cls, v: list[str] | None) -> list[str] | None:
        for p in v or []:
            if p:
                _text(p, "prompt")
        if v is not None and len(v) > MAX_ITEMS:
            raise ValueError(f"{len(v)} prompts; at most {MAX_ITEMS}")
        return v

    @field_validator("device")
    @classmethod
    def _device(cls, v: str) -> str:
        if not (v == "cpu" or v == "cuda" or v.startswith("cuda:") or v == "mps"):
            raise ValueError(f"device {v!r} is not cpu, cuda, cuda:N or mps")
        return v

    @field_validator("targets", mode="before")
    @classmethod
    def _targets(cls, v: Any) -> Any:
        return [v] if isinstance(v, str) else v

    @field_validator("targets")
    @classmethod
    def _target_names(cls, v: list[str]) -> list[str]:
        from bench.targets import parse_target

        for t in v:
            _one_line_name(t, "target")
        return [parse_target(t) for t in v]  # "a + b" -> "a+b"; one concept stays as written


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".") or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{source}: {loc}: {msg}")
    return "\n".join(lines)


def _depth_problem(data: Any) -> str | None:
    """A config nested deeper than :data:`MAX_DEPTH` (checked without recursion), or None."""
    stack = [(data, 0)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH + 2:  # params sit two levels down (methods[i].params)
            return f"nested more than {MAX_DEPTH} levels deep"
        if isinstance(value, dict):
            stack += [(v, depth + 1) for v in value.values()]
        elif isinstance(value, (list, tuple)):
            stack += [(v, depth + 1) for v in value]
    return None


def parse_config(data: Any, source: str = "config") -> RunConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a run config is a YAML mapping, got {type(data).__name__}")
    deep = _depth_problem(data)
    if deep:
        raise ConfigError(f"{source}: {deep}")
    try:
        return RunConfig.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc, source)) from None


def read_config_file(path: str | Path) -> Any:
    """The YAML data of a config file; ConfigError for a missing, unreadable, malformed or empty file."""
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"config file not found: {path}")
    if not path.is_file():
        raise ConfigError(f"{path}: not a file; give --config a YAML file")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"{path}: cannot be read ({exc})") from None
    try:
        data = yaml.safe_load(text)
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply (a config nests at most {MAX_DEPTH} levels)") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    if data is None:  # an empty file is a mistake, not a request for the default benchmark
        raise ConfigError(f"{path}: the config is empty; write its keys (e.g. 'suite: mini-v2-quick') "
                          "or leave --config out to run the default benchmark")
    return data


def load_config(path: str | Path | None) -> RunConfig:
    if path is None:
        return RunConfig()
    return parse_config(read_config_file(path), str(path))
