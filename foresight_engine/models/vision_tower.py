"""Vision tower: Qwen2.5-VL's vision transformer (frozen). Patches in, merged visual tokens out."""
from __future__ import annotations

import torch
from torch import nn

from .. import kernels


class VisionTower(nn.Module):
    """Wraps `Qwen2_5_VLModel.visual`.

    `pixel_values` [N_patches, C*T*P*P] and `grid_thw` [n_images, 3] come from transformers' image processor;
    the output is one row per merged token, images concatenated in order: [N_patches / merge^2, D_vlm].
    """

    def __init__(self, visual: nn.Module):
        super().__init__()
        self.visual = visual
        # window attention through foresight::varlen_attention (the reference where the op is not wired)
        kernels.use_in_vision_tower(visual)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.visual.parameters()).dtype

    def forward(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor) -> torch.Tensor:
        return self.visual(pixel_values.to(self.dtype), grid_thw=grid_thw).pooler_output
