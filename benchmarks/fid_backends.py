"""Is the hand-built FID Inception (erasebench <= issue 21) the network torchmetrics / torch-fidelity run?

Both networks get the same (random) weights through one state-dict file in the FID weight layout;
the same uint8 images go through each at every feature size, and the script records the largest
feature difference and the time per batch, side by side in one process. No download: random
weights test the architecture and the input pipeline, which is what the hand-built copy re-implemented.
The hand-built network is read from git (``--legacy-commit``, the last commit that had it), network
section only (its evaluator and metric registrations are left out).

    python benchmarks/fid_backends.py [--out benchmarks/results/fid_backends.json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import tempfile
import time
from pathlib import Path

import torch

LEGACY_COMMIT = "1f55a94"


def legacy_network(commit: str) -> dict:
    """``FIDInceptionV3`` and ``inception_input`` of the hand-built copy at ``commit``."""
    src = subprocess.run(["git", "show", f"{commit}:bench/evaluators/fid.py"], capture_output=True, text=True,
                         check=True).stdout
    start = src.index("from torchvision.models.inception import")
    stop = src.index("# --------------------------------------------------------------------------- math")
    namespace: dict = {}
    exec("import torch\nimport torch.nn.functional as F\n" + src[start:stop], namespace)  # noqa: S102
    return namespace


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", type=Path, default=Path("benchmarks/results/fid_backends.json"))
    parser.add_argument("--images", type=int, default=8)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--legacy-commit", default=LEGACY_COMMIT)
    args = parser.parse_args()
    from torchmetrics.image.fid import NoTrainInceptionV3

    legacy_ns = legacy_network(args.legacy_commit)
    FIDInceptionV3, inception_input = legacy_ns["FIDInceptionV3"], legacy_ns["inception_input"]

    torch.manual_seed(0)
    legacy = FIDInceptionV3().eval()
    for p in legacy.parameters():  # BN stats too: random but well scaled
        p.data.normal_(0, 0.05)
    for name, b in legacy.named_buffers():
        if name.endswith("running_var"):
            b.uniform_(0.5, 1.5)
        elif name.endswith("running_mean"):
            b.normal_(0, 0.1)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "inception.pth"
        torch.save({k: v for k, v in legacy.state_dict().items() if not k.startswith("AuxLogits")}, path)
        results = {"images": args.images, "torch": torch.__version__, "legacy_commit": args.legacy_commit,
                   "sizes": {}}
        for size in (32, 64, 299):
            gen = torch.Generator().manual_seed(size)
            images_u8 = torch.randint(0, 256, (args.images, 3, size, size), generator=gen, dtype=torch.uint8)
            row = {}
            for dim in (64, 192, 768, 2048):
                tm = NoTrainInceptionV3(name="inception-v3-compat", features_list=[str(dim)],
                                        feature_extractor_weights_path=str(path), antialias=False)
                with torch.no_grad():
                    t_legacy, t_tm = [], []
                    for _ in range(args.repeats):
                        t0 = time.perf_counter()
                        a = legacy.features(inception_input(images_u8.float() / 255), dim)
                        t_legacy.append(time.perf_counter() - t0)
                        t0 = time.perf_counter()
                        b = tm(images_u8)
                        b = b[0] if isinstance(b, tuple) else b
                        t_tm.append(time.perf_counter() - t0)
                row[str(dim)] = {"max_abs_diff": float((a - b.reshape(a.shape)).abs().max()),
                                 "feature_scale": float(a.abs().mean()),
                                 "legacy_s": min(t_legacy), "torchmetrics_s": min(t_tm)}
            results["sizes"][str(size)] = row
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2))
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
