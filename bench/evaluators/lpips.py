"""``lpips``: LPIPS distance to the unedited model's image for the same prompt and seed.

torchmetrics' LPIPS network (``_NoTrainLpips``) with its linear calibration layers (shipped
inside torchmetrics) and the torchvision ImageNet backbone: ``alexnet-owt-7be5be79.pth`` (``net:
alex``, the default), ``vgg16-397923af.pth`` (``vgg``) or ``squeezenet1_1-b8a52dc0.pth``
(``squeeze``), fetched by torchvision's weights API (``<Net>_Weights.IMAGENET1K_V1``, the file
LPIPS v0.1 uses) into the torch hub cache unless found locally: param ``weights`` (the file or its
folder; a ``.safetensors`` conversion also works), else ``$ERASEBENCH_WEIGHTS``
(:mod:`bench.evaluators.weights`). Only the ``features.*`` tensors are used. Images under 64 px
are upsampled to 64 first.

Record column: ``lpips`` (lower = closer to the unedited image).
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from bench.evaluators.base import Evaluator, register_evaluator
from bench.evaluators.clip import file_sha256, load_state_dict
from bench.evaluators.weights import WeightSource, torchvision_source

MIN_SIZE = 64
BACKBONES = {  # net -> (torchvision builder, weights enum, extra local file names)
    "alex": ("alexnet", "AlexNet_Weights", ("alexnet.safetensors",)),
    "vgg": ("vgg16", "VGG16_Weights", ("vgg16.safetensors",)),
    "squeeze": ("squeezenet1_1", "SqueezeNet1_1_Weights", ()),
}


def weight_source(net: str = "alex") -> WeightSource:
    """The LPIPS backbone file: torchvision's ``<Net>_Weights.IMAGENET1K_V1``."""
    _, enum, extra = BACKBONES[net]
    return torchvision_source("lpips", enum, "IMAGENET1K_V1", extra)


@register_evaluator
class LPIPSEvaluator(Evaluator):
    name = "lpips"
    description = "LPIPS (torchmetrics network, torchvision backbone weights) to the unedited model's image"
    needs_reference = True

    def __init__(self, device="cpu", net: str = "alex", weights: str | None = None, batch_size: int = 32,
                 **params: Any):
        if net not in BACKBONES:
            raise ValueError(f"lpips: unknown net {net!r}; valid: {', '.join(BACKBONES)}")
        super().__init__(device, net=net, weights=weights, **params)
        import torchvision
        from torchmetrics.functional.image import lpips as tm_lpips

        tv_name = BACKBONES[net][0]
        self.net_name, self.batch_size = net, int(batch_size)
        self.weights_path = weight_source(net).resolve(weights)
        # pnet_rand: build the backbone without downloading; the linear layers come from torchmetrics
        model = tm_lpips._NoTrainLpips(net=net, pretrained=True, pnet_rand=True)
        features = getattr(torchvision.models, tv_name)(weights=None).features
        sd = {k[len("features."):]: v for k, v in load_state_dict(self.weights_path).items() if k.startswith("features.")}
        try:
            features.load_state_dict(sd)
        except RuntimeError as exc:
            raise RuntimeError(f"lpips: {self.weights_path} is not a torchvision {tv_name} state dict: "
                               f"{str(exc).splitlines()[0]}") from exc
        for slice_ in (m for n, m in model.net.named_children() if n.startswith("slice")):
            for idx, module in slice_.named_children():
                module.load_state_dict(features[int(idx)].state_dict())
        self.lin_path = Path(inspect.getfile(tm_lpips)).parent / "lpips_models" / f"{net}.pth"
        self.model = model.to(self.device).eval().requires_grad_(False)
        import torchmetrics

        self._version = torchmetrics.__version__

    @classmethod
    def weight_sources(cls, net: str = "alex", **params: Any) -> list:
        return [weight_source(net)] if net in BACKBONES else []

    @torch.no_grad()
    def distance(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        out = []
        for i in range(0, len(a), self.batch_size):
            x = a[i : i + self.batch_size].float().clamp(0, 1).to(self.device)
            y = b[i : i + self.batch_size].float().clamp(0, 1).to(self.device)
            if min(x.shape[-2:]) < MIN_SIZE:  # the backbones need >= 64 px (tiny test models make 16 px)
                x, y = (F.interpolate(t, size=(MIN_SIZE, MIN_SIZE), mode="bilinear", align_corners=False) for t in (x, y))
            out.append(self.model(x, y, normalize=True).flatten().float().cpu())
        return torch.cat(out)

    def score(self, images: torch.Tensor, items: list[dict], references: torch.Tensor | None = None) -> list[dict]:
        if references is None:
            raise ValueError("lpips needs the unedited model's images (references) for the same prompts and seeds")
        return [{"lpips": float(d)} for d in self.distance(images, references)]

    def provenance(self) -> dict:
        return {"name": self.name, "model": f"lpips-{self.net_name}", "weights": self.weights_path.name,
                "weights_sha256": file_sha256(self.weights_path), "lin_weights_sha256": file_sha256(self.lin_path),
                "version": f"torchmetrics {self._version}"}
