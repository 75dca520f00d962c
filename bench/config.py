"""The run config (YAML), validated by a typed schema that reports every error at once.

    model: mini                 # 'mini', a local diffusers folder, or a hub id
    seed: 0
    sampler: {name: ddim, steps: 25, guidance: 5.0}
    methods:
      - {name: none}
      - {name: cad-erase, params: {ratio: 0.05}}
      - {name: uce, label: uce-strong, params: {erase_scale: 2.0}}
      - {name: esd-x, edit: edits/esd-x-circle}    # a saved edit: no retraining
    targets: [circle]
    suite: mini-quick
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
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator


class ConfigError(ValueError):
    """An invalid run config; the message lists every problem, one per line."""


# Every model rejects NaN and infinities: no number in a run config means anything as one.
STRICT = ConfigDict(extra="forbid", allow_inf_nan=False)


def _one_line_name(v: str | None, what: str) -> str | None:
    if v is None:
        return v
    if not v.strip():
        raise ValueError(f"{what} is empty")
    if any(not ch.isprintable() for ch in v):
        raise ValueError(f"{what} {v!r} holds a control character (a newline, a tab...); write it on one line")
    return v


class SamplerSpec(BaseModel):
    model_config = STRICT
    name: Literal["ddim", "dpm", "default"] = "ddim"
    steps: int = Field(25, ge=1, le=1000)
    guidance: float = Field(5.0, ge=0.0)
    eta: float = Field(0.0, ge=0.0, le=1.0)
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "fp32"  # the UNet's precision while sampling
    # the UNet's attention while sampling: auto = the measured choice for the device (bench.backbone)
    attention: Literal["auto", "sdpa", "math"] = "auto"
    # the UNet's convolution weights' layout while sampling: auto = the measured choice for the device (bench.backbone)
    memory_format: Literal["auto", "contiguous", "channels_last"] = "auto"
    # bf16/fp16 sampling: the UNet's and VAE's weights cast once ("cast") or fp32 under autocast ("fp32");
    # auto = cast for bf16, and for fp16 on a GPU (bench.generate.SamplerConfig.weights)
    weights: Literal["auto", "fp32", "cast"] = "auto"


class MethodSpec(BaseModel):
    model_config = STRICT
    name: str
    params: dict[str, Any] = Field(default_factory=dict)
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

    @property
    def row_name(self) -> str:
        return self.label or self.name


class AttackSpec(BaseModel):
    model_config = STRICT
    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class RunConfig(BaseModel):
    model_config = STRICT
    model: str = "mini"
    seed: int = 0
    sampler: SamplerSpec | None = None  # default: the suite's sampler
    methods: list[MethodSpec] | None = None  # default: every registered erasure method with its defaults
    targets: list[str] = Field(default_factory=lambda: ["circle"], min_length=1)
    kind: Literal["object", "style", "colour", "nudity", "identity"] | None = None
    anchor: str | None = None  # None: the method's recipe (or "", the empty prompt, where it has none)
    preserve: list[str] | None = None  # None: the method's recipe (or nothing to preserve)
    suite: str = "mini-quick"
    tier: str | None = None
    images_per_prompt: int | None = Field(None, ge=1)
    batch_size: int = Field(64, ge=1)
    device: str = "cpu"
    dtype: Literal["float32", "float16", "bfloat16"] = "float32"
    attacks: list[AttackSpec] | None = None  # default: the suite's attacks
    cache_dir: str | None = None
    data_dir: str | None = None  # local copies of prompt files (offline use)

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
        for t in v:
            _one_line_name(t, "target")
        return v


def format_validation_error(exc: ValidationError, source: str) -> str:
    lines = []
    for err in exc.errors():
        loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"]).lstrip(".") or "(top level)"
        msg = err["msg"].removeprefix("Value error, ")
        if err["type"] == "extra_forbidden":
            msg = "unknown key"
        lines.append(f"{source}: {loc}: {msg}")
    return "\n".join(lines)


def parse_config(data: Any, source: str = "config") -> RunConfig:
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: a run config is a YAML mapping, got {type(data).__name__}")
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
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}: malformed YAML{where}: {problem}") from None
    if data is None:  # an empty file is a mistake, not a request for the default benchmark
        raise ConfigError(f"{path}: the config is empty; write its keys (e.g. 'suite: mini-quick') "
                          "or leave --config out to run the default benchmark")
    return data


def load_config(path: str | Path | None) -> RunConfig:
    if path is None:
        return RunConfig()
    return parse_config(read_config_file(path), str(path))
