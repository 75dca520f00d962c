"""CAD attribution on a Stable-Diffusion-1.4-shaped model in half precision: cost per mode (issue 4).

Builds SD 1.4's architecture with random weights (the UNet of ``CompVis/stable-diffusion-v1-4``, a CLIP
ViT-L/14-shaped text encoder, the KL VAE; a byte-level tokenizer) in a local folder, loads it with
``load_backbone(folder, device, dtype)`` as a real checkpoint would be, and runs the attribution engine
(bench/attribution.py) with the paper's defaults per (dtype, objective, mode): a 50-step DDIM grid, one
latent per timestep, sampling guidance 3.0; amplify on ``--n-images`` concept images (the paper: 50).
Records wall time, peak memory (``bench.memory.PeakMemory``: the CUDA allocator's peak, or RSS growth on
a CPU) and UNet passes; then zeroes the paper's selection (row,
``--ratio`` 0.001), samples images from the edited half-precision UNet, and undoes the edit. Random weights give
the real cost, not meaningful scores. A warm-up attribution (2 timesteps) runs first for each dtype.

    python benchmarks/cad_sd_timing.py --device cuda --out runs/cad/sd_timing.json
    python benchmarks/cad_sd_timing.py --shape tiny --device cpu --dtypes float32   # the same code, small
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.sd_fixtures (the tokenizer builder)

from bench.attribution import AttributionConfig, attribute  # noqa: E402
from bench.backbone import load_backbone  # noqa: E402
from bench.generate import SamplerConfig, generate  # noqa: E402
from bench.memory import PeakMemory  # noqa: E402

# diffusers' UNet2DConditionModel config of CompVis/stable-diffusion-v1-4 (860 M parameters)
SD14_UNET = dict(
    sample_size=64, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    cross_attention_dim=768, attention_head_dim=8, norm_num_groups=32)
SD14_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                 projection_dim=768, hidden_act="quick_gelu")
SD14_VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, sample_size=512, norm_num_groups=32,
                down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
def build_random_sd(folder: Path, shape: str, device: str, seed: int = 0) -> Path:
    """A diffusers SD folder with random weights: SD 1.4's shapes saved in fp16, or the tests' tiny model."""
    from diffusers import AutoencoderKL, DDIMScheduler, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from tests.sd_fixtures import build_tiny_sd, build_tokenizer

    if shape == "tiny":
        return build_tiny_sd(folder, seed)
    torch.manual_seed(seed)
    tok = build_tokenizer(folder / "tokenizer")
    with torch.device(device):  # initialise on the accelerator: an 860 M UNet initialises slowly on a CPU
        text_encoder = CLIPTextModel(CLIPTextConfig(
            vocab_size=49408, max_position_embeddings=77, bos_token_id=tok.bos_token_id,
            eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id, **SD14_TEXT))
        unet = UNet2DConditionModel(**SD14_UNET)
        vae = AutoencoderKL(in_channels=3, out_channels=3, latent_channels=4, **SD14_VAE)
    for module, name in ((text_encoder, "text_encoder"), (unet, "unet"), (vae, "vae")):
        module.to(torch.float16).save_pretrained(folder / name, safe_serialization=True)
    DDIMScheduler(beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", clip_sample=False,
                  set_alpha_to_one=False, steps_offset=1).save_pretrained(folder / "scheduler")
    (folder / "model_index.json").write_text(json.dumps({"_class_name": "StableDiffusionPipeline"}))
    return folder


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shape", choices=("sd14", "tiny"), default="sd14")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtypes", default="float16,bfloat16")
    ap.add_argument("--modes", default="fast,faithful", help="erase objective's Monte-Carlo modes")
    ap.add_argument("--timesteps", type=int, default=50)
    ap.add_argument("--n-images", type=int, default=8, help="amplify: concept images (the paper's default is 50)")
    ap.add_argument("--image-steps", type=int, default=50)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--edit-images", type=int, default=4, help="images sampled from the edited model")
    ap.add_argument("--ratio", type=float, default=0.001, help="row ratio of the edit (tiny fan-ins need >= 0.004)")
    ap.add_argument("--prompt", default="a photo of a church")
    ap.add_argument("--model-dir", type=Path, default=None, help="reuse/keep the random model here")
    ap.add_argument("--out", type=Path, default=Path("runs/cad/sd_timing.json"))
    args = ap.parse_args(argv)

    device = torch.device(args.device)
    folder = args.model_dir or Path(tempfile.mkdtemp(prefix=f"random-{args.shape}-"))
    t0 = time.perf_counter()
    if not (folder / "unet").is_dir():
        build_random_sd(folder, args.shape, args.device)
    result = {
        "shape": args.shape, "device": str(device), "prompt": args.prompt, "timesteps": args.timesteps,
        "batch_size": args.batch_size, "build_seconds": round(time.perf_counter() - t0, 1),
        "torch": torch.__version__, "python": platform.python_version(),
        "gpu": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "tf32_matmul": torch.backends.cuda.matmul.allow_tf32,
        "TORCH_ALLOW_TF32_CUBLAS_OVERRIDE": os.environ.get("TORCH_ALLOW_TF32_CUBLAS_OVERRIDE"), "runs": [],
    }
    for dtype in args.dtypes.split(","):
        t0 = time.perf_counter()
        backbone = load_backbone(str(folder), device=device, dtype=dtype)
        load_seconds = time.perf_counter() - t0
        n_params = sum(p.numel() for p in backbone.unet.parameters())
        attribute(backbone, args.prompt, AttributionConfig(timesteps=2, batch_size=args.batch_size))  # warm-up
        jobs = [("erase", mode) for mode in args.modes.split(",")] + [("amplify", "-")]
        atts = {}
        for objective, mode in jobs:
            cfg = AttributionConfig(objective=objective, mode=mode if mode != "-" else "faithful",
                                    timesteps=args.timesteps, n_images=args.n_images, image_steps=args.image_steps,
                                    batch_size=args.batch_size)
            _sync(device)
            with PeakMemory(device) as memory:
                att = attribute(backbone, args.prompt, cfg)
                _sync(device)
            atts[(objective, mode)] = att
            row = {"dtype": dtype, "objective": objective, "mode": mode, "unet_parameters": n_params,
                   "load_seconds": round(load_seconds, 1), "peak_gib": memory.peak_mb / 1024,
                   "n_images": args.n_images if objective == "amplify" else None,
                   "finite_scores": all(bool(torch.isfinite(s).all()) for s in att.scores.values()),
                   **{k: (round(v, 2) if isinstance(v, float) else v) for k, v in att.stats.items()}}
            result["runs"].append(row)
            print(json.dumps(row), flush=True)
        # the edit itself in this dtype: zero the paper's selection, sample, undo
        edit = atts[("erase", args.modes.split(",")[0])].select("row", args.ratio)
        before = {n: p.detach().clone() for n, p in backbone.unet.named_parameters() if n in edit.indices}
        t0 = time.perf_counter()
        edit.apply(backbone.unet)
        _sync(device)
        apply_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        with PeakMemory(device) as memory:
            images, _ = generate(backbone, [args.prompt] * args.edit_images, list(range(args.edit_images)),
                                 SamplerConfig("ddim", 50, 7.5), batch_size=args.edit_images, model_fingerprint="t",
                                 progress=False)
            _sync(device)
        gen_seconds = time.perf_counter() - t0
        edit.undo(backbone.unet)
        restored = all(torch.equal(before[n], p) for n, p in backbone.unet.named_parameters() if n in before)
        row = {"dtype": dtype, "step": "edit", "components_zeroed": edit.n_selected,
               "apply_seconds": round(apply_seconds, 3), "images": args.edit_images,
               "generate_seconds_50_steps": round(gen_seconds, 2), "peak_gib": memory.peak_mb / 1024,
               "images_finite": bool(torch.isfinite(images).all()), "undo_restores_bit_for_bit": restored}
        result["runs"].append(row)
        print(json.dumps(row), flush=True)
        del backbone, atts
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2))
    print(args.out)
    return result


if __name__ == "__main__":
    main()
