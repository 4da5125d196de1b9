"""Built stages behind the eager components' own signatures, so `Engine`'s stage logic runs unchanged.

A *stage function* takes and returns tensors only (a torch.compile'd stage wrapper or an ONNX Runtime session,
see `models/stages.py`). The shims below subclass the eager components and route the one method a stage
replaces to it; everything else (schedules, the Euler loop, image encoding, embeddings) stays the eager code.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

from ..config import ModelConfig
from ..errors import ArtifactError, InvalidInputError
from ..models.adapter import ConditioningAdapter
from ..models.backbone import Backbone, PrefillOutput
from ..models.export_spec import BuildShape
from ..models.stages import stack_cache, unstack_cache
from ..models.vae import VideoVAE
from ..models.video_decoder import LatentGrid, VideoDecoder

StageFn = Callable[..., tuple[torch.Tensor, ...] | torch.Tensor]


def onnx_providers(device_type: str) -> list[str]:
    """ONNX Runtime providers to use: TensorRT and CUDA first where present and the artifact is for a GPU."""
    import onnxruntime as ort
    available = ort.get_available_providers()
    wanted = ["TensorrtExecutionProvider", "CUDAExecutionProvider"] if device_type == "cuda" else []
    return [p for p in wanted if p in available] + ["CPUExecutionProvider"]


class OnnxStage:
    """An ONNX Runtime session called like the stage wrapper it was exported from: tensors in, tensors out."""

    def __init__(self, path: Path, device_type: str = "cpu", quantized: bool = False, threads: int = 0):
        import onnxruntime as ort
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.log_severity_level = 3
        if quantized:
            # ORT's extended optimizations fuse/move float8 Q/DQ into ops with no float8 CPU kernel
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_BASIC
        self.session = ort.InferenceSession(str(path), options, providers=onnx_providers(device_type))
        self.input_names = [i.name for i in self.session.get_inputs()]

    def __call__(self, *inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
        if len(inputs) != len(self.input_names):
            raise InvalidInputError(f"ONNX stage takes {self.input_names}, got {len(inputs)} input(s)")
        feeds = {name: x.detach().cpu().contiguous().numpy() for name, x in zip(self.input_names, inputs)}
        return tuple(torch.from_numpy(np.ascontiguousarray(o)) for o in self.session.run(None, feeds))


def _canonical(*inputs: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """Stage inputs as they were built: floating point in fp32, contiguous (a compiled stage guards on dtype and
    strides, an ONNX session needs its declared types), so an upstream bf16 component cannot force a recompile."""
    return tuple((x.float() if x.is_floating_point() else x).contiguous() for x in inputs)


def _outputs(result) -> tuple[torch.Tensor, ...]:
    return result if isinstance(result, (tuple, list)) else (result,)


class StagedAdapter(nn.Module):
    """`ConditioningAdapter`'s call signature over an adapter stage function."""

    def __init__(self, adapter: ConditioningAdapter, stage: StageFn):
        super().__init__()
        self.config = adapter.config
        self.stage = stage

    def forward(self, world_latent: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        cond, mask = _outputs(self.stage(*_canonical(world_latent)))
        return cond, mask.long()


class StagedVideoDecoder(VideoDecoder):
    """One denoising step from a stage function built for one request shape (latent grid, RoPE scale, batch)."""

    def __init__(self, decoder: VideoDecoder, stage: StageFn, shape: BuildShape, config: ModelConfig):
        super().__init__(decoder.transformer, decoder.scheduler_config)
        self.stage = stage
        self.shape = shape
        self.model_config = config
        self.grid = shape.latent_grid(config)
        self.rope_scale = tuple(float(x) for x in shape.rope_scale(config))
        self.batch = shape.batch  # 2 when built for classifier-free guidance

    def check_request(self, grid: LatentGrid, rope_scale, batch: int) -> None:
        if (self.grid, self.rope_scale, self.batch) == (grid, tuple(float(x) for x in rope_scale), batch):
            return
        vae = self.model_config.vae
        asked = BuildShape.of_latents(grid.frames, grid.height, grid.width, self.model_config,
                                      frame_rate=round(vae.temporal_compression / rope_scale[0]), guidance=batch == 2)
        raise ArtifactError(self.shape.mismatch(asked) or f"this artifact's denoising step is built for (grid, RoPE "
                            f"scale, batch) {(self.grid, self.rope_scale, self.batch)}, the request needs "
                            f"{(grid, tuple(rope_scale), batch)}")

    def forward(self, latents, conditioning, conditioning_mask, timestep, grid: LatentGrid, rope_scale):
        self.check_request(grid, rope_scale, latents.shape[0])
        return _outputs(self.stage(*_canonical(latents, conditioning, conditioning_mask, timestep)))[0].float()


class StagedVAE(VideoVAE):
    """`VideoVAE` whose decode runs a stage function (image encoding stays eager)."""

    def __init__(self, vae: VideoVAE, stage: StageFn, shape: BuildShape, config: ModelConfig):
        super().__init__(vae.vae)
        self.stage = stage
        self.shape = shape
        self.model_config = config
        grid = shape.latent_grid(config)
        self.latent_shape = (1, grid.channels, grid.frames, grid.height, grid.width)

    def check_request(self, latent_shape: tuple[int, ...]) -> None:
        if tuple(latent_shape) == self.latent_shape:
            return
        _, _, frames, height, width = latent_shape
        asked = BuildShape.of_latents(frames, height, width, self.model_config, frame_rate=self.shape.frame_rate,
                                      guidance=self.shape.guidance)  # the VAE decode depends on the grid only
        raise ArtifactError(self.shape.mismatch(asked) or f"this artifact's VAE decode is built for latents "
                            f"{self.latent_shape}, got {tuple(latent_shape)}")

    def decode(self, latents, generator, decode_timestep: float = 0.0, decode_noise_scale: float | None = None):
        self.check_request(tuple(latents.shape))
        return _outputs(self.stage(*_canonical(latents)))[0].float()


class StagedBackbone(Backbone):
    """Prefill and decode step from stage functions over explicit KV tensors; the cache handed back and forth
    is still a transformers `DynamicCache`, so callers see the eager types."""

    def __init__(self, backbone: Backbone, prefill: StageFn | None, decode: StageFn | None):
        nn.Module.__init__(self)
        self.language_model = backbone.language_model
        self.lm_head = backbone.lm_head
        self.image_token_id = backbone.image_token_id
        self.query_tokens = backbone.query_tokens
        self.prefill_stage = prefill
        self.decode_stage = decode

    def prefill(self, embeds, position_ids, cache=None) -> PrefillOutput:
        if self.prefill_stage is None or cache is not None:  # a continued session runs eager
            return super().prefill(embeds, position_ids, cache)
        logits, world_latent, keys, values = _outputs(self.prefill_stage(*_canonical(embeds, position_ids)))
        return PrefillOutput(logits=logits.float(), cache=unstack_cache(keys, values, self.language_model.config),
                             world_latent=world_latent, next_position=position_ids.amax(dim=(0, 2)) + 1)

    def decode_step(self, token_ids, position, cache) -> torch.Tensor:
        if self.decode_stage is None:
            return super().decode_step(token_ids, position, cache)
        logits, keys, values = _outputs(self.decode_stage(*_canonical(token_ids, position, *stack_cache(cache))))
        for i in range(keys.shape[0]):  # append the new position, as the eager step does
            cache.update(keys[i, :, :, -1:].to(self.dtype), values[i, :, :, -1:].to(self.dtype), i)
        return logits.float()
