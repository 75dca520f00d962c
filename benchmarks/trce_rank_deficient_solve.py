"""TRCE's stage-1 solve as algorithm version 1 ran it for an object target with no recipe, on the tiny SD folder.

lamb 0, the concept's first-[EoT] rows in ``augment_num`` object templates, and the empty prompt's 77 rows preserved
at the official weight per row (3.3e-9): a rank-deficient normal matrix (the tiny CLIP's final LayerNorm has bias 0,
so every row sums to 0). ``torch.linalg.solve`` returns weights without an error; this prints how far their norm
moved. Version 2 refuses the solve (``methods.trce.check_solvable``). Run: ``python benchmarks/trce_rank_deficient_solve.py``.
"""

from __future__ import annotations

import tempfile

from bench.backbone import load_backbone
from methods.trce import OBJECT_TEMPLATES, OFFICIAL_ROW_WEIGHT, eot_pairs
from methods.uce import cross_attention_projections, edit_projections, gram_rows
from tests.sd_fixtures import build_tiny_sd


def main() -> None:
    backbone = load_backbone(str(build_tiny_sd(tempfile.mkdtemp())))
    base = dict(cross_attention_projections(backbone.unet))
    for n in (2, 15):
        edited = backbone.copy()
        c_old, c_new, pairs = eot_pairs(edited, ["cat"], "", OBJECT_TEMPLATES[:n])
        edit_projections(edited, c_old, c_new, gram_rows(edited, [""]), erase_scale=1 / len(pairs),
                         preserve_scale=OFFICIAL_ROW_WEIGHT, lamb=0.0)
        ratios = [float(layer.weight.float().norm() / base[name].weight.float().norm())
                  for name, layer in cross_attention_projections(edited.unet)]
        print(f"augment_num {n}: ||W_new|| / ||W_old|| over the K/V layers: min {min(ratios):.3g}, max {max(ratios):.3g}")


if __name__ == "__main__":
    main()
