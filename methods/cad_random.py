"""CAD-Random: the control row of CAD-Erase. It zeroes as many weights as CAD-Erase would, in the same weight
matrices, chosen uniformly at random instead of by attribution (reviewers of the CAD paper asked for this
control: how much of CAD-Erase's effect does any sparse ablation of that size have?). It belongs next to
``cad-erase`` in every CAD table.

The selection is CAD-Erase's own rule (:func:`bench.attribution.select_components`) applied to random scores:
every component of the matrices CAD-Erase scores (``selector``) gets a score drawn uniformly from (0, 1] with a
generator seeded by the request's seed, and the rule picks ``k = floor(ratio * unit size)`` (or ``count``) per
unit (row, matrix, or all matrices for ``granularity="global"``). CAD-Erase picks at most that many (only
components with a positive attribution), so the random row zeroes the upper bound of CAD-Erase's count; with
``granularity="global"`` the total is the same and the share of each matrix is random too.

It shares CAD-Erase's config, mini preset and recipes (it is a subclass), so a CAD table's two rows always use
the same selection size. No attribution is computed: the edit costs no UNet pass.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

from methods.base import ErasureRequest, register_method
from methods.cad import CADErase, resolve_config

if TYPE_CHECKING:
    import torch

    from bench.backbone import Backbone


def random_scores(shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """Scores uniform on (0, 1] for every component, drawn matrix by matrix in name order from one generator
    seeded with ``seed`` (the same seed gives the same selection on any device)."""
    import torch

    gen = torch.Generator("cpu").manual_seed(int(seed))
    return {name: 1.0 - torch.rand(shapes[name], generator=gen) for name in sorted(shapes)}


@register_method
class CADRandom(CADErase):
    name = "cad-random"
    # a control of this harness, not a published method: CAD-Erase's deviations are not its own
    deviations = ()
    deviations_checked = ("no official code: CAD-Erase's selection (mail-research/CAD-attribution4diffusion @ 18b257e) "
                          "replaced by a uniform draw of as many weights in the same matrices")
    description = "CAD-Erase's control: as many weights zeroed as CAD-Erase, in the same matrices, at random"
    algorithm_version = "1"

    def apply(self, backbone: Backbone, request: ErasureRequest) -> Backbone:
        from bench.attribution import check_selectable, select_components, select_parameters

        self.check_request(request)
        config = resolve_config(self.config, backbone, "erase", self.explicit)
        shapes = {n: tuple(p.shape) for n, p in select_parameters(backbone.unet, config.selector).items()}
        check_selectable(shapes, config.granularity, config.ratio, config.count)
        edited = backbone.copy()
        edit = select_components(random_scores(shapes, request.seed), "positive", config.granularity, config.ratio,
                                 config.count)
        edit.meta.update(objective="random", selector=config.selector, seed=request.seed)
        edit.apply(edited.unet)
        self.edit = edit
        self.stats = {"components_zeroed": edit.n_selected, "components_total": sum(math.prod(s) for s in shapes.values()),
                      "unet_forward": 0, "unet_backward": 0}
        edited.edits.append({
            "method": self.name, "targets": list(request.targets), "config": dataclasses.asdict(config),
            "seed": request.seed, "components_zeroed": edit.n_selected, "zeroed_per_matrix": edit.counts(),
        })
        return edited

