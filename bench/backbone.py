"""Load a text-to-image diffusion model as a :class:`Backbone`.

A backbone is either a diffusers Stable Diffusion 1.x/2.x checkpoint (a hub id or a local
folder with ``unet/``, ``text_encoder/``, ``tokenizer/``, ``scheduler/`` and ``vae/``), or the
bundled mini model (``model: mini``), which has the same component types in pixel space.
Weights are read from safetensors only and no remote code is ever run.

Methods receive a backbone and return an edited one; the edited components can be saved with
:meth:`Backbone.save_edit` and reloaded with ``load_backbone(base, edit=folder)`` so an
expensive edit runs once.

Longer than bench/'s usual 400 lines (docs/DEVELOPING.md): one job, the model object: loading (the mini model, a
folder, a hub id), the per-device attention and weight choices loading makes, and saving and re-applying edits,
which all read the Backbone's fields.
"""

from __future__ import annotations

import contextlib
import copy
import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from bench.store import EDIT_SUMS, full_disk, verify_edit, write_edit_sums
from bench.worlds import TRAIN_COMMANDS, WORLD_OF_MODEL, is_mini_model, model_dir

if TYPE_CHECKING:  # diffusers and transformers load when a model does (`erasebench list/report/check` need neither)
    from diffusers import AutoencoderKL, SchedulerMixin, UNet2DConditionModel
    from transformers import CLIPTextModel, PreTrainedTokenizerBase

MINI_MODEL_DIR = model_dir("mini")  # the v1 world's weights
MARKER = "erasebench.json"
COMPONENTS = ("unet", "text_encoder", "tokenizer", "scheduler", "vae")
DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
# A method may edit a component by attaching an adapter module under this name (SPM's rank-1 adapter on the UNet)
# instead of changing its weights; such a component is saved as the adapter alone (``adapter/<component>/``, with
# the method that reloads it: ``METHODS.get(method).load_adapter(backbone, folder)``), not as a full module.
ADAPTER_ATTR = "erasebench_adapter"

# Attention: diffusers' two stock processors, ``sdpa`` (``AttnProcessor2_0``, torch's
# scaled_dot_product_attention, diffusers' default) and ``math`` (``AttnProcessor``: baddbmm, softmax,
# bmm). They compute the same function and round differently, so the sampling choice is part of an
# image's cache key (``bench.generate.image_key``). Chosen per device type and per use by measurement:
# - CPU sampling: sdpa. Side by side in one process, one thread (benchmarks/generate_vs_diffusers.py,
#   benchmarks/results/generate_vs_diffusers_cpu_fp32.json), 16 images x 5 DDIM steps took 4.7-5.3 CPU s
#   with sdpa against 6.5-7.0 with math on an SD-shaped model, and 1.39 against 1.40-1.56 on the mini model.
# - CPU gradients: math (its backward was several times faster than SDPA's on CPU when the mini model
#   was trained, bench/worlds/v1/train.py); load_backbone leaves it set for the methods that train.
# - CUDA: sdpa for both (diffusers' default; flash / memory-efficient kernels).
ATTENTION = ("sdpa", "math")


def attention_processor(attention: str) -> type:
    """diffusers' processor class of an ``ATTENTION`` name."""
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0

    return {"sdpa": AttnProcessor2_0, "math": AttnProcessor}[attention]


ATTENTION_BY_DEVICE = {
    "cpu": {"sampling": "sdpa", "gradients": "math"},
    "cuda": {"sampling": "sdpa", "gradients": "sdpa"},
}


def resolve_attention(attention: str, device: torch.device | str, use: str = "sampling") -> str:
    """``auto`` -> the measured choice for ``device``'s type and ``use`` (sampling | gradients); others unchanged."""
    if attention == "auto":
        return ATTENTION_BY_DEVICE.get(torch.device(device).type, {}).get(use, "sdpa")
    if attention not in ATTENTION:
        raise ValueError(f"unknown attention {attention!r}; valid: auto, {', '.join(ATTENTION)}")
    return attention


# Memory format of the UNet's convolution weights while sampling: ``contiguous`` (torch's default, NCHW) or
# ``channels_last`` (NHWC, ``unet.to(memory_format=torch.channels_last)`` as diffusers' speed guide does). The
# kernels round differently (pixels at most one 8-bit step apart), so the sampling choice is part of an image's
# key. Chosen per device type by measurement (benchmarks/generate_memory_format.py,
# benchmarks/results/generate_memory_format_cpu.json):
# - CPU: channels_last is faster. generate() on the mini model (DPM-Solver++ 10, 96 images, batch 64, one
#   thread, the two formats alternating in one process, 4 rounds): 4.66-5.73 images/s contiguous, 5.72-6.27
#   channels_last, median ratio 1.145 (1.06-1.23); an SD-shaped random model (two threads, 8 images): median
#   ratio 1.02 (0.96-1.20). The images of the two differ by at most one 8-bit step. With the cheaper layout change
#   below, 8 rounds (generate_memory_format_cpu_small_calls.json): 1.059 mini in one call of 96 images, 0.97 at
#   one image a call (an attack's judged candidates), 1.094 SD-shaped.
#   The default run, one right after the other: 372 s contiguous then 362 s channels_last (benchmarks/results/
#   default_run_cpu_before_channels_last.json, default_run_cpu_channels_last.json); a day later 411 s channels_last
#   then 386 s contiguous (default_run_cpu_channels_last_default.json, default_run_cpu_contiguous_same_hour.json):
#   the later run was the faster on both days, so the whole run's gain is within the machine's variation. It waited
#   one session for a test that could not take a one-step change of rounding (P4D against random tokens on 5
#   prompts, 1-0 contiguous, 1-1 channels-last; at 12 prompts x 3 seeds 8-6 and 7-5, p 0.8: a coin's throw,
#   benchmarks/results/attacks_mini_p4d_*.json); that test now asserts P4D's optimisation instead.
#   That was on AVX2-only CPUs. Where torch runs its AVX-512 kernels channels_last is the slower one: a 2-core Zen 4
#   EPYC, idle, 4 rounds, medians 0.953 (mini, 96 images a call), 0.933 (one image a call) and 0.944 (SD-shaped, one
#   thread); the same chip limited to AVX2 kernels (ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2) 1.042 and
#   1.038 (benchmarks/results/generate_memory_format_cpu_zen4_*.json). generate() against diffusers there, fp32:
#   0.948 / 0.964 channels_last, 0.989 / 0.994 contiguous (mini / SD-shaped; generate_vs_diffusers_cpu_zen4_idle_*).
#   So the CPU's choice follows torch's kernel level (MEMORY_FORMAT_BY_CPU_CAPABILITY): channels_last for AVX2,
#   contiguous for the rest (AVX-512, and levels not measured: ARM, no AVX).
# - other devices: contiguous (torch's default); no GPU measurement yet.
# - weights cast to bf16 (sampler ``weights: cast``): contiguous on every device. On the CPU, oneDNN's bf16
#   group norm on channels-last activations is slow: torch.profiler on the SD-shaped model (DDIM 10, 8 images, one
#   thread, 2-core AMD EPYC Zen 4 with native bf16, shared) gave aten::native_group_norm 1.45 s channels-last
#   against 0.10 s contiguous, of 6.9 s and 5.8 s in all; generate() against diffusers' bf16 pipeline, the same
#   process, CPU time: 0.85x channels-last, 1.00x contiguous (mini model: 0.72x and 1.02x). Issue 38,
#   benchmarks/results/generate_vs_diffusers_cpu_issue38_*.json.
# A resumed run keeps the format its manifest recorded (bench.runner.recorded_sampler).
MEMORY_FORMATS = {"contiguous": torch.contiguous_format, "channels_last": torch.channels_last}
MEMORY_FORMAT_BY_CPU_CAPABILITY: dict[str, str] = {"AVX2": "channels_last"}  # torch.backends.cpu.get_cpu_capability()


def auto_memory_format(device: torch.device | str) -> str:
    """The measured fp32 choice for ``device``: on a CPU by the kernels torch runs there
    (``MEMORY_FORMAT_BY_CPU_CAPABILITY``), elsewhere ``contiguous``."""
    if torch.device(device).type == "cpu":
        return MEMORY_FORMAT_BY_CPU_CAPABILITY.get(torch.backends.cpu.get_cpu_capability(), "contiguous")
    return "contiguous"


def resolve_memory_format(memory_format: str, device: torch.device | str, weights: str = "fp32") -> str:
    """``auto`` -> the measured choice for ``device`` (:func:`auto_memory_format`), or ``contiguous`` for weights cast
    to a lower precision (``weights`` the resolved sampler choice: ``cast``); others unchanged."""
    if memory_format == "auto":
        if weights == "cast":
            return "contiguous"
        return auto_memory_format(device)
    if memory_format not in MEMORY_FORMATS:
        raise ValueError(f"unknown memory format {memory_format!r}; valid: auto, {', '.join(MEMORY_FORMATS)}")
    return memory_format


def memory_format_of(module: torch.nn.Module) -> str:
    """``channels_last`` when every 4-d weight of ``module`` is laid out NHWC (and one is not NCHW), else
    ``contiguous``."""
    weights = [p for p in module.parameters() if p.dim() == 4]
    if weights and all(p.is_contiguous(memory_format=torch.channels_last) for p in weights) \
            and not all(p.is_contiguous() for p in weights):
        return "channels_last"
    return "contiguous"


@contextlib.contextmanager
def using_memory_format(unet: torch.nn.Module, memory_format: str) -> Iterator[None]:
    """Run a block with ``unet``'s 4-d weights in ``memory_format``, then put them back as they were."""
    before = memory_format_of(unet)
    if before == memory_format:
        yield
        return
    # Only the 4-d weights are re-laid, each Parameter kept (``.data`` swapped, as Module.to does), so optimisers and
    # hooks holding them are unaffected; a third of ``unet.to(memory_format=...)``'s time (mini UNet, one thread:
    # 6.6 ms against 20.9 ms for a conversion and its restore), which generate() pays on every call (an attack's
    # judged candidates are calls of one or a few images). The converted weights must stay ordinary tensors when a
    # caller samples under torch.inference_mode(): weights made there could never take part in a backward pass
    # again (a method training after sampling).
    weights = [p for p in unet.parameters() if p.dim() == 4]

    def lay_out(memory_format: torch.memory_format) -> None:
        with torch.inference_mode(False), torch.no_grad():
            for p in weights:
                p.data = p.data.contiguous(memory_format=memory_format)

    lay_out(MEMORY_FORMATS[memory_format])
    try:
        yield
    finally:
        lay_out(MEMORY_FORMATS[before])


def _stamp(params: list[torch.nn.Parameter]) -> tuple:
    """What identifies the values of ``params`` cheaply: each one's storage, version counter (bumped by every
    in-place change of the parameter: an optimiser step, ``load_state_dict``, a closed-form ``weight.copy_``),
    shape and dtype. Assigning ``p.data`` changes the storage; a change made through ``p.data`` in place is the one
    it cannot see (no method here edits that way)."""
    return tuple((p.data_ptr(), p._version, tuple(p.shape), p.dtype) for p in params)


@contextlib.contextmanager
def using_weights(module: torch.nn.Module, dtype: torch.dtype | None, memory_format: str = "contiguous",
                  cache: dict | None = None) -> Iterator[bool]:
    """Run a block with ``module``'s floating-point parameters cast to ``dtype`` (4-d ones laid out in
    ``memory_format``), then put the original tensors back. Yields whether it cast anything.

    Each Parameter is kept (its ``.data`` swapped, as ``Module.to`` does), so optimisers, hooks and adapters holding
    it are unaffected, and the originals come back unchanged: edits are computed and saved in their own precision.
    The cast tensors are made outside inference mode (a caller sampling under ``torch.inference_mode()`` must leave
    weights a method can still train), and kept in ``cache`` (a dict the caller owns: the backbone's) under the
    module's parameters' :func:`_stamp`: the next call on unchanged weights swaps them in without casting again; a
    changed parameter (trained, edited) casts again. Buffers are not cast. A no-op for ``dtype`` None or a module
    whose parameters are already in ``dtype``.
    """
    params = [p for p in module.parameters() if p.is_floating_point()]
    if dtype is None or all(p.dtype == dtype for p in params):
        yield False
        return
    fmt = MEMORY_FORMATS[memory_format]
    key = (id(module), dtype, memory_format)
    stamp = _stamp(params)
    held = cache.get(key) if cache is not None else None
    if held is None or held[0] != stamp:
        if cache is not None:
            cache.pop(key, None)  # the stale copy goes before the new one is made
        with torch.inference_mode(False), torch.no_grad():
            cast = [p.data.to(dtype=dtype, memory_format=fmt if p.dim() == 4 else torch.preserve_format)
                    for p in params]
        if cache is not None:
            cache[key] = (stamp, cast)
    else:
        cast = held[1]
    originals = [p.data for p in params]
    with torch.inference_mode(False), torch.no_grad():
        for p, c in zip(params, cast):
            p.data = c
    try:
        yield True
    finally:
        with torch.inference_mode(False), torch.no_grad():
            for p, o in zip(params, originals):
                p.data = o


def attention_of(unet: torch.nn.Module) -> str | None:
    """The stock processor every attention layer of ``unet`` uses (``sdpa``/``math``), or None if mixed/custom."""
    kinds = {type(p) for p in unet.attn_processors.values()}
    names = [name for name in ATTENTION if kinds == {attention_processor(name)}]
    return names[0] if names else None


@contextlib.contextmanager
def using_attention(unet: torch.nn.Module, attention: str) -> Iterator[None]:
    """Run a block with ``unet``'s stock attention processors set to ``attention``, then restore them.

    Layers with any other (custom) processor are left as they are.
    """
    before = unet.attn_processors
    stock = tuple(attention_processor(name) for name in ATTENTION)
    target = attention_processor(attention)
    if all(isinstance(p, target) or not isinstance(p, stock) for p in before.values()):
        yield
        return
    unet.set_attn_processor({k: target() if isinstance(p, stock) else p for k, p in before.items()})
    try:
        yield
    finally:
        unet.set_attn_processor(before)


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """A tensor's values as bytes in row-major order, whatever its dtype (bf16 included), device and memory
    format. ``contiguous()`` alone is not enough: a channels-last 1x1 convolution weight counts as contiguous
    with a last stride other than 1, which ``view(torch.uint8)`` refuses; ``reshape(-1)`` of it has stride 1."""
    return tensor.detach().to("cpu").contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()


class BackboneLoadError(RuntimeError):
    """A model folder or hub id that cannot be loaded; the message says what is wrong."""


@dataclass
class Backbone:
    tokenizer: PreTrainedTokenizerBase
    text_encoder: CLIPTextModel
    unet: UNet2DConditionModel
    scheduler: SchedulerMixin
    vae: AutoencoderKL | None = None
    name: str = "model"
    kind: str = "sd"  # "sd" or "mini"
    world: str | None = None  # a mini model's world ("v1", "v2"); None for SD
    space_to_depth: int = 1  # mini: the exact pixel_unshuffle "autoencoder"
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))
    dtype: torch.dtype = torch.float32
    guidance_hooks: list[Any] = field(default_factory=list)
    edits: list[dict] = field(default_factory=list)  # provenance of the edits applied so far
    # sampling's copies of the weights in a lower precision (bench.generate: ``weights: cast``), kept by
    # :func:`using_weights` across calls while the weights do not change; never copied with the backbone
    sampling_weights: dict = field(default_factory=dict, repr=False, compare=False)

    # ------------------------------------------------------------------ text
    def tokenize(self, prompts: list[str]) -> torch.Tensor:
        return self.tokenizer(
            list(prompts),
            padding="max_length",
            max_length=self.tokenizer.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(self.device)

    def encode(self, prompts: list[str], grad: bool = False) -> torch.Tensor:
        """Text embeddings [N, L, D] (the UNet's ``encoder_hidden_states``)."""
        with torch.set_grad_enabled(grad):
            return self.text_encoder(self.tokenize(prompts))[0]

    # ---------------------------------------------------------------- images
    @property
    def latent_shape(self) -> tuple[int, int, int]:
        size = self.unet.config.sample_size
        size = size if isinstance(size, int) else size[0]
        return (self.unet.config.in_channels, size, size)

    @property
    def image_size(self) -> int:
        scale = self.space_to_depth if self.vae is None else 2 ** (len(self.vae.config.block_out_channels) - 1)
        return self.latent_shape[1] * scale

    def decode(self, latents: torch.Tensor) -> torch.Tensor:
        """Latents -> images [N, 3, H, W] in [0, 1] (float32)."""
        if self.vae is None:
            images = F.pixel_shuffle(latents.float(), self.space_to_depth)
        else:
            images = self.vae.decode(latents.to(self.vae.dtype) / self.vae.config.scaling_factor).sample
        return ((images.float() + 1) / 2).clamp(0, 1)

    def encode_images(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        """Images [N, 3, H, W] in [0, 1] -> latents (the inverse of :meth:`decode`, scaled as SD expects)."""
        x = images.to(self.device) * 2 - 1
        if self.vae is None:
            return F.pixel_unshuffle(x.float(), self.space_to_depth).to(self.dtype)
        dist = self.vae.encode(x.to(self.vae.dtype)).latent_dist
        return (dist.mean * self.vae.config.scaling_factor).to(self.dtype)

    # ------------------------------------------------------------ identity
    def fingerprint(self) -> str:
        """SHA-256 over the UNet and text-encoder weights and the guidance hooks' configs."""
        h = hashlib.sha256()
        for prefix, module in (("unet", self.unet), ("text_encoder", self.text_encoder)):
            for key, tensor in sorted(module.state_dict().items()):
                h.update(f"{prefix}.{key}".encode())
                h.update(tensor_bytes(tensor))
        for hook in self.guidance_hooks:
            h.update(json.dumps(hook.fingerprint(), sort_keys=True, default=str).encode())
        adapter = getattr(self.unet, ADAPTER_ATTR, None)  # its weights are in the UNet's state_dict; its config here
        if adapter is not None:
            h.update(json.dumps(adapter.config(), sort_keys=True, default=str).encode())
        return h.hexdigest()

    def copy(self) -> Backbone:
        """A copy whose UNet and text encoder can be edited without touching this one."""
        return Backbone(
            tokenizer=self.tokenizer,
            text_encoder=copy.deepcopy(self.text_encoder),
            unet=copy.deepcopy(self.unet),
            scheduler=self.scheduler,
            vae=self.vae,
            name=self.name,
            kind=self.kind,
            space_to_depth=self.space_to_depth,
            device=self.device,
            dtype=self.dtype,
            guidance_hooks=list(self.guidance_hooks),
            edits=list(self.edits),
        )

    # ------------------------------------------------------------ edits
    def save_edit(self, folder: str | Path, components: tuple[str, ...] = ("unet", "text_encoder"),
                  info: dict | None = None) -> Path:
        """Save the edited components (safetensors) plus ``edit.json``; reload with ``load_backbone(base, edit=folder)``.

        Written into a temporary folder of its own (``.<name>.tmp-<pid>-<random>``, so two processes saving
        at once never share one) and renamed into place, so a killed save leaves no half edit and a reader
        sees the old edit or the new one, never a mix. An existing edit is first renamed aside (atomic), then
        the new one renamed in, then the old one deleted; with two concurrent savers of one folder the
        last rename wins and both calls return a complete edit.
        """
        import errno
        import os
        import shutil
        import uuid

        from bench.filemode import make_readable

        folder = Path(folder)
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = folder.with_name(f".{folder.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
        try:
            tmp.mkdir()
            adapters = {}
            for name in components:
                module = getattr(self, name)
                adapter = getattr(module, ADAPTER_ATTR, None)
                if adapter is not None:  # the base weights are unchanged: the adapter is the edit
                    adapter.save(tmp / "adapter" / name)
                    adapters[name] = adapter.config()["method"]
                else:
                    module.save_pretrained(tmp / name, safe_serialization=True)
            meta = {"base": self.name, "components": list(components), "edits": self.edits, **(info or {})}
            if adapters:
                meta["adapters"] = adapters
            meta["checksums"] = EDIT_SUMS  # every file's SHA-256, verified on load (bench.store.verify_edit)
            (tmp / "edit.json").write_text(json.dumps(meta, indent=2, default=str))
            make_readable(tmp)  # save_pretrained's safetensors files are 0600 (bench.filemode)
            write_edit_sums(tmp)
            for _ in range(100):
                try:
                    os.rename(tmp, folder)  # atomic; fails if ``folder`` exists and is not empty
                    return folder
                except OSError as exc:
                    if exc.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                        raise
                aside = folder.with_name(f".{folder.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
                try:
                    os.rename(folder, aside)
                except FileNotFoundError:  # another saver moved it first: try again
                    continue
                shutil.rmtree(aside, ignore_errors=True)
            raise OSError(f"{folder}: could not replace the saved edit (other processes keep writing it)")
        except Exception as exc:  # a full disk while saving (an OSError, or safetensors' own error): one named line
            raised = full_disk(exc, folder)
            if raised is exc:
                raise
            raise raised from None
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)

    def to(self, device: str | torch.device | None = None, dtype: torch.dtype | None = None) -> Backbone:
        self.device = torch.device(device) if device is not None else self.device
        self.dtype = dtype or self.dtype
        for module in (self.unet, self.text_encoder, self.vae):
            if module is not None:
                _place(module, self.device, self.dtype)
        return self


# --------------------------------------------------------------------------- loading
def _place(module: torch.nn.Module, device: torch.device, dtype: torch.dtype) -> torch.nn.Module:
    """``module`` on ``device``, its floating-point weights cast to ``dtype`` only where they are not in it (an edit
    saved in another dtype): a no-op cast made diffusers warn on every load, in every worker, that modules which
    should stay in float32 might be cast."""
    module.to(device)
    if any(p.is_floating_point() and p.dtype != dtype for p in module.parameters()):
        module.to(dtype)
    return module


def _check_safetensors(folder: Path, component: str) -> None:
    sub = folder / component
    if not sub.is_dir():
        raise BackboneLoadError(f"{folder}: missing component folder {component}/ (expected {', '.join(COMPONENTS[:4])})")
    if component in ("tokenizer", "scheduler"):
        return
    if any(sub.glob("*.safetensors")):
        return
    pickled = [p.name for p in sub.iterdir() if p.suffix in (".bin", ".ckpt", ".pt", ".pth")]
    if pickled:
        raise BackboneLoadError(
            f"{sub}: only pickled weights ({', '.join(pickled)}); erasebench loads safetensors only "
            "(convert with `save_pretrained(..., safe_serialization=True)`)"
        )
    raise BackboneLoadError(f"{sub}: no *.safetensors weight file")


def _resolve(model: str) -> tuple[str, bool]:
    """(path-or-id, is_local)."""
    if is_mini_model(model):
        folder = model_dir(model)
        if not (folder / "unet").is_dir():
            raise BackboneLoadError(f"the bundled {model} model is missing at {folder}; reproduce it with "
                                    f"`{TRAIN_COMMANDS[WORLD_OF_MODEL[model]]}`")
        return str(folder), True
    path = Path(model).expanduser()
    if path.exists():
        if not path.is_dir():
            raise BackboneLoadError(f"{model}: not a folder")
        return str(path), True
    if model.startswith((".", "/", "~")) or model.count("/") != 1:
        raise BackboneLoadError(f"model folder not found: {model} (give 'mini', 'mini-v2', a local folder, or a hub id "
                                "'org/name')")
    return model, False


WHOLE_FILE_LIMIT = 64 * 2**20  # files up to this size are hashed whole; larger ones by size, head and tail
EDGE = 4 * 2**20  # bytes hashed at each end of a larger file


def _file_digest(path: Path) -> str:
    h = hashlib.sha256()
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size <= WHOLE_FILE_LIMIT:
            for block in iter(lambda: f.read(2**20), b""):
                h.update(block)
        else:
            h.update(f.read(EDGE))
            f.seek(size - EDGE)
            h.update(f.read(EDGE))
    return h.hexdigest()


def model_files_signature(model: str) -> dict[str, list] | None:
    """{relative path: [size, sha256]} of every file of a local model folder ('mini' or a path); None for a hub id
    or a missing folder. Files above ``WHOLE_FILE_LIMIT`` are hashed by their first and last ``EDGE`` bytes (an SD
    UNet is 3.4 GB; a weight file that changes changes there too)."""
    root = model_dir(model) if is_mini_model(model) else Path(model).expanduser()
    if not root.is_dir():
        return None
    return {str(p.relative_to(root)): [p.stat().st_size, _file_digest(p)]
            for p in sorted(root.rglob("*")) if p.is_file() and not any(part.startswith(".") for part in p.parts)}


def _hub_reachable_or_cached(model: str, timeout: float = 3.0) -> None:
    """BackboneLoadError at once for a hub id that is not in the local cache while the hub cannot be reached
    (offline, or ``HF_HUB_OFFLINE``): the hub client would retry for about 50 s before failing (issue 37)."""
    import os
    import socket
    from urllib.parse import urlparse

    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return
    for name in ("model_index.json", "unet/config.json"):
        if isinstance(try_to_load_from_cache(model, name), str):
            return
    offline = os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")
    host = urlparse(os.environ.get("HF_ENDPOINT") or "https://huggingface.co").hostname or "huggingface.co"
    if not offline:
        try:
            socket.create_connection((host, 443), timeout=timeout).close()
            return
        except OSError:
            pass
    raise BackboneLoadError(f"cannot load model {model!r}: not in the local Hugging Face cache, and the hub ({host}) "
                            "cannot be reached; give a local folder, or download it where there is a network")


def load_backbone(
    model: str,
    device: str | torch.device = "cpu",
    dtype: str | torch.dtype = "float32",
    edit: str | Path | None = None,
) -> Backbone:
    """Load ``model`` ('mini', a local diffusers folder, or a hub id) and optionally an edit folder on top."""
    torch_dtype = DTYPES[dtype] if isinstance(dtype, str) else dtype
    device = torch.device(device)
    source, local = _resolve(model)
    if not local:
        _hub_reachable_or_cached(model)
    root = Path(source)
    kind, s2d, world = "sd", 1, None
    if local:
        for component in ("unet", "text_encoder", "tokenizer", "scheduler"):
            _check_safetensors(root, component)
        if (root / MARKER).exists():
            marker = json.loads((root / MARKER).read_text())
            kind, s2d = marker.get("kind", "sd"), int(marker.get("space_to_depth", 1))
            world = marker.get("world", "v1") if kind == "mini" else None  # v1's marker predates the field
    has_vae = kind != "mini" and (not local or (root / "vae").is_dir())
    if local and has_vae:
        _check_safetensors(root, "vae")
    common = dict(use_safetensors=True, torch_dtype=torch_dtype)
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import AutoTokenizer, CLIPTextModel

    try:
        tokenizer = AutoTokenizer.from_pretrained(source, subfolder="tokenizer")
        text_encoder = CLIPTextModel.from_pretrained(source, subfolder="text_encoder", **common)
        unet = UNet2DConditionModel.from_pretrained(source, subfolder="unet", **common)
        scheduler_config = _load_scheduler_config(source, local)
        vae = AutoencoderKL.from_pretrained(source, subfolder="vae", **common) if has_vae else None
    except BackboneLoadError:
        raise
    except Exception as exc:  # hub/network/format errors: one clear line
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise BackboneLoadError(f"cannot load model {model!r}: {first}") from exc
    import diffusers
    from diffusers import DDIMScheduler

    scheduler_cls = getattr(diffusers, scheduler_config.get("_class_name", "DDIMScheduler"), DDIMScheduler)
    scheduler = scheduler_cls.from_config(scheduler_config)
    backbone = Backbone(
        tokenizer=tokenizer,
        text_encoder=text_encoder,
        unet=unet,
        scheduler=scheduler,
        vae=vae,
        name=model,
        kind=kind,
        world=world,
        space_to_depth=s2d,
        device=device,
        dtype=torch_dtype,
    )
    if edit is not None:
        apply_saved_edit(backbone, edit)
    for module in (backbone.unet, backbone.text_encoder, backbone.vae):
        if module is not None:
            _place(module, device, torch_dtype).eval().requires_grad_(False)
    # the attention for gradients (the methods that train); sampling switches to its own (using_attention)
    backbone.unet.set_attn_processor(attention_processor(resolve_attention("auto", device, "gradients"))())
    return backbone


def _load_scheduler_config(source: str, local: bool) -> dict:
    if local:
        return json.loads((Path(source) / "scheduler" / "scheduler_config.json").read_text())
    from diffusers import DDIMScheduler

    return dict(DDIMScheduler.load_config(source, subfolder="scheduler"))


def apply_saved_edit(backbone: Backbone, edit: str | Path) -> Backbone:
    """Replace the components saved by :meth:`Backbone.save_edit` in ``backbone`` (in place)."""
    folder = Path(edit)
    meta_path = folder / "edit.json"
    if not meta_path.exists():
        raise BackboneLoadError(f"{folder}: not an edit folder (no edit.json)")
    meta = verify_edit(folder)  # whole (SHA256SUMS), and edit.json readable; DamagedFileError naming the file
    adapters = meta.get("adapters", {})
    for name in meta["components"]:
        if name in adapters:  # an adapter onto the base component, reloaded by the method that made it
            from methods import METHODS

            where = folder / "adapter" / name
            if not (where.is_dir() and any(where.glob("*.safetensors"))):
                raise BackboneLoadError(f"{where}: missing the saved adapter of {name} (no *.safetensors)")
            loader = getattr(METHODS.get(adapters[name]), "load_adapter", None)
            if loader is None:
                raise BackboneLoadError(f"{folder}: method {adapters[name]!r} declares no load_adapter")
            loader(backbone, where)
            continue
        _check_safetensors(folder, name)
        cls = type(getattr(backbone, name))
        module = cls.from_pretrained(folder / name, use_safetensors=True, torch_dtype=backbone.dtype)
        setattr(backbone, name, module.to(backbone.device).eval().requires_grad_(False))
    backbone.edits = list(meta.get("edits", []))
    backbone.unet.set_attn_processor(attention_processor(resolve_attention("auto", backbone.device, "gradients"))())
    return backbone
