"""erasebench's ``generate()`` against plain diffusers sampling, side by side in one process (issue 24, goal 1).

    python benchmarks/generate_vs_diffusers.py --out benchmarks/results/generate_vs_diffusers_cpu.json
    python benchmarks/generate_vs_diffusers.py --device cuda --models sd14 --precisions fp16 bf16 \\
        --out benchmarks/results/generate_vs_diffusers_cuda.json

Models (random or shipped weights, nothing downloaded):

- ``mini``: the bundled mini model (no VAE). Its diffusers counterpart is the loop diffusers'
  ``StableDiffusionPipeline.__call__`` runs, written out: encode the prompts and the empty negative
  prompt once, then per DDIM step ``unet(cat([x, x]), t, cat([uncond, cond]))``, CFG, ``scheduler.step``,
  and the mini model's exact decoder (``pixel_shuffle``).
- ``sd-shaped``: a random SD-shaped model as in the issue (UNet blocks 64/128/256, 16x16 latents, a
  4-layer text encoder, a small VAE), run through ``StableDiffusionPipeline`` itself.
- ``sd14``: an SD-1.4-shaped random model (UNet 320/640/1280/1280, 64x64 latents, the 12-layer CLIP
  ViT-L text encoder, the SD VAE) through ``StableDiffusionPipeline``: for ``--device cuda`` (fp16).

For each (model, precision, attention) both sides sample the same prompts from the same initial
noise, with the same scheduler (DDIM, ``--steps``, guidance ``--guidance``) in the same batch; the
runs alternate and repeat (``--repeats``), and the best time of each side gives images/s and the
ratio (harness / diffusers; above 1 the harness is faster); ``ratio_cpu`` is the same ratio of process
CPU seconds, the steadier figure on a CPU shared with other work; ``ratio_cpu_median`` the median over the rounds
of each round's CPU-time ratio (the two sides back to back, so the machine's load hits both: the figure to quote). Precision: diffusers runs with its weights cast to the dtype, as a user of the pipeline does;
the harness samples with its ``precision`` and ``weights`` settings (``--weights``): ``auto`` (the default:
bf16, and fp16 on a GPU, with weights cast once, ``weights: cast``; bf16 weights on both sides is the like-for-like
comparison), ``fp32`` (fp32 weights under autocast: the harness before issue 38) or ``cast``. ``max_pixel_difference`` (8-bit levels) checks both sides make the same images.
``defaults``: the harness with the choices it makes for the device (``precision: auto``,
``attention: auto``) against plain fp32 diffusers with its default SDPA attention (goal: 1.5x).
``--compile``: also the defaults with the harness's UNet wrapped in ``torch.compile`` (inductor), a choice the
harness does not make on the CPU; ``compile_seconds`` is the first (compiling) call, the rest are steady-state.

The harness is timed without a cache (no PNG I/O), like the pipeline.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from _results import write_result  # benchmarks/_results.py, beside this script

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PROMPTS = ["a red circle", "a blue striped square", "a green dotted star", "a yellow heart", "a purple outline cross",
           "a cyan checkered diamond", "a red gradient crescent", "a blue triangle"]


def build_sd(folder: Path, shape: str) -> Path:
    """A random SD-shaped diffusers folder: ``sd-shaped`` (the issue's small model) or ``sd14`` (SD 1.4's sizes)."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from tests.sd_fixtures import build_tokenizer

    torch.manual_seed(0)
    tok = build_tokenizer(folder / "tokenizer")
    if shape == "sd14":  # CompVis/stable-diffusion-v1-4 unet/, text_encoder/ and vae/ config.json sizes
        te = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12)
        unet_kw = dict(sample_size=64, block_out_channels=(320, 640, 1280, 1280), layers_per_block=2,
                       down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
                       up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3, cross_attention_dim=768,
                       attention_head_dim=8, norm_num_groups=32)
        vae_kw = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, norm_num_groups=32, sample_size=512)
    else:  # the SD-shaped model: 16x16 latents, blocks 64/128/256, a 4-layer text encoder
        te = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=4, num_attention_heads=4)
        unet_kw = dict(sample_size=16, block_out_channels=(64, 128, 256), layers_per_block=1,
                       down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
                       up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
                       cross_attention_dim=64, attention_head_dim=8, norm_num_groups=32)
        vae_kw = dict(block_out_channels=(32, 64), layers_per_block=1, norm_num_groups=32, sample_size=32)
    n_vae = len(vae_kw["block_out_channels"])
    CLIPTextModel(CLIPTextConfig(vocab_size=len(tok), max_position_embeddings=77, projection_dim=te["hidden_size"],
                                 bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id, **te)).save_pretrained(folder / "text_encoder")
    UNet2DConditionModel(in_channels=4, out_channels=4, **unet_kw).save_pretrained(folder / "unet")
    AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, down_block_types=("DownEncoderBlock2D",) * n_vae,
                  up_block_types=("UpDecoderBlock2D",) * n_vae, **vae_kw).save_pretrained(folder / "vae")
    DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                  set_alpha_to_one=False, steps_offset=1).save_pretrained(folder / "scheduler")
    return folder


class PlainDiffusers:
    """Plain diffusers sampling of a backbone's modules (its own copies, cast to the precision's dtype)."""

    def __init__(self, backbone, dtype: torch.dtype, attention: str, steps: int, guidance: float):
        from diffusers import DDIMScheduler, StableDiffusionPipeline

        from bench.backbone import attention_processor

        self.backbone, self.dtype, self.steps, self.guidance = backbone, dtype, steps, guidance
        self.unet = copy.deepcopy(backbone.unet).to(dtype=dtype)
        self.unet.set_attn_processor(attention_processor(attention)())
        self.text_encoder = copy.deepcopy(backbone.text_encoder).to(dtype=dtype)
        self.scheduler = DDIMScheduler.from_config(backbone.scheduler.config)
        self.pipe = None
        if backbone.vae is not None:
            self.pipe = StableDiffusionPipeline(
                vae=copy.deepcopy(backbone.vae).to(dtype=dtype), text_encoder=self.text_encoder,
                tokenizer=backbone.tokenizer, unet=self.unet, scheduler=self.scheduler, safety_checker=None,
                feature_extractor=None, requires_safety_checker=False)
            self.pipe.set_progress_bar_config(disable=True)

    @torch.no_grad()
    def __call__(self, prompts: list[str], noise: torch.Tensor) -> torch.Tensor:
        noise = noise.to(self.dtype)
        if self.pipe is not None:
            return self.pipe(prompts, num_inference_steps=self.steps, guidance_scale=self.guidance, latents=noise,
                             output_type="pt").images.float()
        # the mini model: StableDiffusionPipeline.__call__'s loop, with the mini model's exact decoder
        tok = self.backbone.tokenize
        cond = self.text_encoder(tok(prompts))[0]
        uncond = self.text_encoder(tok([""] * len(prompts)))[0]
        context = torch.cat([uncond, cond])
        self.scheduler.set_timesteps(self.steps, device=noise.device)
        latents = noise * self.scheduler.init_noise_sigma
        for t in self.scheduler.timesteps:
            model_in = self.scheduler.scale_model_input(torch.cat([latents] * 2), t)
            eps_u, eps_c = self.unet(model_in, t, encoder_hidden_states=context, return_dict=False)[0].chunk(2)
            latents = self.scheduler.step(eps_u + self.guidance * (eps_c - eps_u), t, latents, return_dict=False)[0]
        return self.backbone.decode(latents)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def compare(backbone, name: str, precision: str, attention: str, args, baseline_attention: str | None = None,
            compile_unet: bool = False) -> dict:
    """Time the harness (``precision``, ``attention``) against plain diffusers, alternating, best of ``repeats``."""
    from bench.generate import SamplerConfig, generate, image_seed, initial_noise, resolve_sampler

    device = backbone.device
    prompts = [PROMPTS[i % len(PROMPTS)] for i in range(args.images)]
    seeds = [image_seed(f"p{i}", 0, 0) for i in range(args.images)]
    sampler = resolve_sampler(SamplerConfig("ddim", args.steps, args.guidance, precision=precision,
                                            attention=attention, weights=args.weights,
                                            memory_format=args.memory_format), device)
    plain_precision = "fp32" if baseline_attention else sampler.precision
    if backbone.dtype != torch.float32:  # weights already in half precision (--half-weights): no autocast
        sampler = dataclasses.replace(sampler, precision="fp32")
        plain_precision = next(k for k, v in DTYPES.items() if v == backbone.dtype)
    plain = PlainDiffusers(backbone, DTYPES[plain_precision], baseline_attention or sampler.attention, args.steps,
                           args.guidance)
    fingerprint = "benchmark"  # generate() keys images with it; no cache here

    def harness():
        return generate(backbone, prompts, seeds, sampler, batch_size=args.batch_size, model_fingerprint=fingerprint,
                        progress=False)[0]

    def diffusers_side():
        out = []
        for start in range(0, len(prompts), args.batch_size):
            out.append(plain(prompts[start : start + args.batch_size],
                             initial_noise(backbone, seeds[start : start + args.batch_size])))
        return torch.cat(out)

    compile_seconds = None
    if compile_unet:
        backbone = copy.copy(backbone)  # the caller's backbone keeps its eager UNet
        backbone.unet = torch.compile(backbone.unet)
        t0 = time.perf_counter()
        harness()
        compile_seconds = round(time.perf_counter() - t0, 1)
    harness(), diffusers_side()  # warm-up (allocators, oneDNN primitives)
    times: dict[str, list[float]] = {"harness": [], "diffusers": []}
    cpu: dict[str, list[float]] = {"harness": [], "diffusers": []}
    images = {}
    for _ in range(args.repeats):
        for side, fn in (("harness", harness), ("diffusers", diffusers_side)):
            sync(device)
            t0, c0 = time.perf_counter(), time.process_time()
            images[side] = fn()
            sync(device)
            times[side].append(time.perf_counter() - t0)
            cpu[side].append(time.process_time() - c0)
    diff = (images["harness"].float().cpu() - images["diffusers"].float().cpu().clamp(0, 1)).abs().max() * 255
    best = {side: min(ts) for side, ts in times.items()}
    row = {
        "model": name, "precision": plain_precision if backbone.dtype != torch.float32 else sampler.precision,
        "weights_dtype": str(backbone.dtype).removeprefix("torch."), "weights": sampler.weights,
        "attention": sampler.attention, "memory_format": sampler.memory_format,
        "diffusers_precision": plain_precision, "diffusers_attention": baseline_attention or sampler.attention,
        "images": args.images, "batch_size": args.batch_size, "steps": args.steps,
        "harness_images_per_s": round(args.images / best["harness"], 3),
        "diffusers_images_per_s": round(args.images / best["diffusers"], 3),
        "ratio": round(best["diffusers"] / best["harness"], 3),
        "ratio_per_repeat_median": round(statistics.median(d / h for h, d in zip(times["harness"], times["diffusers"])), 3),
        "seconds": {side: [round(t, 3) for t in ts] for side, ts in times.items()},
        # process CPU seconds: on a shared CPU they move less with other people's load than wall time does
        "cpu_seconds": {side: [round(t, 3) for t in ts] for side, ts in cpu.items()},
        "ratio_cpu": round(min(cpu["diffusers"]) / min(cpu["harness"]), 3),
        # the figure to quote on a shared CPU: per round (harness then diffusers, back to back) the CPU-time ratio,
        # and its median over the rounds; with the median CPU seconds of each side
        "ratio_cpu_per_round": [round(d / h, 3) for h, d in zip(cpu["harness"], cpu["diffusers"])],
        "ratio_cpu_median": round(statistics.median(d / h for h, d in zip(cpu["harness"], cpu["diffusers"])), 3),
        "cpu_seconds_median": {side: round(statistics.median(ts), 3) for side, ts in cpu.items()},
        "max_pixel_difference": round(float(diff), 2),
        "compiled": compile_unet, "compile_seconds": compile_seconds,
    }
    print(json.dumps({k: row[k] for k in ("model", "precision", "weights", "attention", "memory_format",
                                           "harness_images_per_s", "diffusers_images_per_s", "ratio",
                                           "ratio_cpu_median", "max_pixel_difference")}),
          flush=True)
    return row


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cpu")
    p.add_argument("--models", nargs="+", default=None, help="mini sd-shaped sd14 (default: mini sd-shaped on "
                   "cpu, sd14 on cuda)")
    p.add_argument("--precisions", nargs="+", default=None, help="default: fp32 bf16 on cpu, fp16 bf16 on cuda")
    p.add_argument("--attentions", nargs="+", default=["sdpa", "math"])
    p.add_argument("--images", type=int, default=None, help="default: 64 for mini, 8 for the SD shapes")
    p.add_argument("--batch-size", type=int, default=None, help="default: --images")
    p.add_argument("--steps", type=int, default=25)
    p.add_argument("--guidance", type=float, default=5.0)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--half-weights", action=argparse.BooleanOptionalAction, default=None,
                   help="load the harness's weights in the precision's dtype (as `dtype: float16` in a run config "
                        "does) instead of autocasting fp32 weights; default: on for cuda")
    p.add_argument("--weights", choices=["auto", "fp32", "cast"], default="auto",
                   help="the harness's sampler `weights` (bf16/fp16 sampling: cast once, or fp32 under autocast)")
    p.add_argument("--memory-format", choices=["auto", "contiguous", "channels_last"], default="auto",
                   help="the harness's sampler `memory_format` (auto: contiguous for cast weights, else the device's "
                        "measured choice; channels_last with cast bf16 weights is the harness before issue 38's fix)")
    p.add_argument("--compile", action="store_true", help="add a row: the defaults with a torch.compile'd UNet")
    p.add_argument("--out", type=Path, default=Path("runs/bench/generate_vs_diffusers.json"))
    args = p.parse_args(argv)
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    models = args.models or (["sd14"] if device.type == "cuda" else ["mini", "sd-shaped"])
    half_weights = device.type == "cuda" if args.half_weights is None else args.half_weights
    precisions = args.precisions or (["fp16", "bf16"] if device.type == "cuda" else ["fp32", "bf16"])

    from bench.backbone import load_backbone

    rows, defaults = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for name in models:
            folder = "mini" if name == "mini" else str(build_sd(Path(tmp) / name, name))
            run_args = argparse.Namespace(**vars(args))
            run_args.images = args.images or (64 if name == "mini" else 8)
            run_args.batch_size = args.batch_size or run_args.images
            backbone = load_backbone(folder, device=device)
            for precision in precisions:
                half = half_weights and precision != "fp32"
                model = load_backbone(folder, device=device, dtype=DTYPES[precision]) if half else backbone
                for attention in args.attentions:
                    rows.append(compare(model, name, precision, attention, run_args))
                del model
            defaults.append(compare(backbone, name, "auto", "auto", run_args, baseline_attention="sdpa"))
            if args.compile:
                defaults.append(compare(backbone, name, "auto", "auto", run_args, baseline_attention="sdpa",
                                        compile_unet=True))
            del backbone
    return write_result(args.out, {"device": str(device), "command": " ".join(["python", "benchmarks/generate_vs_diffusers.py",
                                                                  *(sys.argv[1:] if argv is None else argv)]), "rows": rows,
                                   "defaults_vs_plain_fp32": defaults},
                        device=str(device))


if __name__ == "__main__":
    main()
