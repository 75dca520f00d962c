"""Where the SD-shaped UNet's sampling time goes on this CPU (issue 38): torch's profiler over one forward pass, and
the attention shapes of that model timed with torch's kernels.

    python benchmarks/unet_op_profile.py --out benchmarks/results/unet_op_profile_cpu.json

The model (``--model``) is ``benchmarks/generate_vs_diffusers.py``'s random ``sd-shaped`` UNet (blocks 64/128/256,
16x16 latents, 8 heads: head size 8 and 16), or ``mini-v2``, the shipped mini world v2's UNet (4 heads: head size 24
and 32), in a batch of ``--batch`` rows (16: 8 images under classifier-free guidance), one
thread. For each precision (fp32; bf16 weights cast once, as the harness samples where bf16 is native) it records:

- ``forward_seconds``: the best of ``--repeats`` forward passes, with diffusers' two stock attention processors
  (``sdpa``: torch's scaled_dot_product_attention, the harness's choice on the CPU; ``math``: baddbmm, softmax, bmm)
  and diffusers' ``SlicedAttnProcessor`` (the math formula over slices of 8 and 32 batch x head rows: ``sliced-8``,
  ``sliced-32``), which the harness does not offer; it is measured here to see whether the small model's head size
  calls for it;
- ``ops``: the profiler's self CPU time per op over three ``sdpa`` forward passes, as shares of the total;
- ``attention``: each attention shape of the model (batch, heads, query length, key length, head size) timed alone
  with the SDPA kernel torch picks and with the math formula, in milliseconds (best of 20).
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
import time
from pathlib import Path

import torch
from _results import write_result  # benchmarks/_results.py, beside this script

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def best_seconds(fn, repeats: int) -> float:
    fn()  # warm-up
    times = []
    for _ in range(repeats):
        start = time.process_time()
        fn()
        times.append(time.process_time() - start)
    return min(times)


def math_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    scores = torch.baddbmm(torch.empty(q.shape[0] * q.shape[1], q.shape[2], k.shape[2], dtype=q.dtype),
                           q.flatten(0, 1), k.flatten(0, 1).transpose(1, 2), beta=0, alpha=q.shape[-1] ** -0.5)
    return torch.bmm(scores.softmax(-1), v.flatten(0, 1))


def main(argv: list[str] | None = None) -> dict:
    from diffusers import UNet2DConditionModel
    from diffusers.models.attention_processor import AttnProcessor, AttnProcessor2_0, SlicedAttnProcessor
    from generate_vs_diffusers import build_sd
    from torch.profiler import profile

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", choices=["sd-shaped", "mini-v2"], default="sd-shaped")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=6)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    torch.set_num_threads(1)

    if args.model == "mini-v2":
        from bench.backbone import load_backbone

        unet = load_backbone("mini-v2").unet.float().eval()
    else:
        with tempfile.TemporaryDirectory() as tmp:
            build_sd(Path(tmp), "sd-shaped")
            unet = UNet2DConditionModel.from_pretrained(Path(tmp) / "unet").eval()
    cfg = unet.config
    heads = cfg.attention_head_dim  # diffusers' name for the number of heads in SD 1.x configs
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(args.batch, cfg.in_channels, cfg.sample_size, cfg.sample_size, generator=gen)
    text = torch.randn(args.batch, 77, cfg.cross_attention_dim, generator=gen)
    t = torch.tensor(500)
    shapes = []  # (batch, heads, query length, key length, head size) of each attention layer's call
    for name, module in unet.named_modules():
        if name.endswith(("attn1", "attn2")):
            level = next(i for i, c in enumerate(cfg.block_out_channels) if c == module.inner_dim)
            side = cfg.sample_size // 2 ** level
            keys = side * side if name.endswith("attn1") else 77
            shapes.append((args.batch, heads, side * side, keys, module.inner_dim // heads))

    rows = []
    for precision, dtype in DTYPES.items():
        model = copy.deepcopy(unet).to(dtype)
        latents, text_emb = x.to(dtype), text.to(dtype)
        row = {"precision": precision, "forward_seconds": {}}
        with torch.no_grad():
            for attention, processor in (("sdpa", AttnProcessor2_0), ("math", AttnProcessor),
                                         ("sliced-8", lambda: SlicedAttnProcessor(8)),
                                         ("sliced-32", lambda: SlicedAttnProcessor(32))):
                model.set_attn_processor(processor())
                row["forward_seconds"][attention] = round(best_seconds(lambda m=model, a=latents, c=text_emb: m(a, t, c), args.repeats), 4)
            model.set_attn_processor(AttnProcessor2_0())
            with profile() as prof:
                for _ in range(3):
                    model(latents, t, text_emb)
        events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
        total = sum(e.self_cpu_time_total for e in events)
        row["ops"] = [{"op": e.key, "share": round(e.self_cpu_time_total / total, 4), "calls": e.count}
                      for e in events[:12]]
        row["attention"] = []
        for shape in sorted(set(shapes), reverse=True):
            b, h, lq, lk, d = shape
            q = torch.randn(b, h, lq, d, generator=gen).to(dtype)
            k, v = (torch.randn(b, h, lk, d, generator=gen).to(dtype) for _ in range(2))
            row["attention"].append({
                "shape": list(shape), "layers": shapes.count(shape),
                "sdpa_ms": round(1e3 * best_seconds(
                    lambda q=q, k=k, v=v: torch.nn.functional.scaled_dot_product_attention(q, k, v), 20), 3),
                "math_ms": round(1e3 * best_seconds(lambda q=q, k=k, v=v: math_attention(q, k, v), 20), 3)})
        rows.append(row)
        print(row["precision"], row["forward_seconds"], row["ops"][:3])
    result = {"command": "python benchmarks/unet_op_profile.py " + " ".join(argv if argv is not None else sys.argv[1:]),
              "model": args.model, "batch": args.batch, "rows": rows}
    write_result(args.out, result)
    return result


if __name__ == "__main__":
    main()
