"""Stage suites: each stage of an engine as a no-argument callable on fixed inputs computed once beforehand."""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # `STAGES` is read by the CLI's parser, which must not import torch
    from ..engine import Engine
    from .contenders import BenchInputs

STAGES = ("vision", "spatial", "prefill", "decode_step", "adapter", "denoise_step", "vae")  # spatial: hybrid only


def stage_calls(engine: Engine, inputs: BenchInputs) -> dict[str, Callable[[], Any]]:
    """`{stage: fn}` for one engine; the inputs of each stage come from the engine's own previous stages, and each
    stage runs what the engine runs (its stage functions, its velocity model, its KV cache and decode span).
    `spatial` (DINOv2) is there only for a model with the hybrid encoder."""
    import torch

    from ..models.kv_cache import decode_step
    with torch.inference_mode():
        request = engine.prepare(inputs.images, inputs.prompt, **inputs.settings)
        image_embeds = engine.vision(request)
        prefill = engine.prefill(request, image_embeds)
        first_token = prefill.logits.argmax(-1, keepdim=True)  # [1, 1]
        slot = torch.tensor(prefill.cache.length, device=engine.device)
        span = engine.decode_span(prefill.cache.length + request.settings.max_new_tokens)
        spatial = engine.spatial(request)
        cond, cond_mask = engine.adapt(prefill.world_latent, spatial)
        generator = torch.Generator("cpu").manual_seed(request.settings.seed)
        state, loop = engine.start_denoising(request, cond, cond_mask, generator)
        latents = loop.latents.clone()  # the initial latents (the loop updates its own in place)

    calls = {
        "vision": lambda: engine.vision(request),
        "spatial": lambda: engine.spatial(request),
        "prefill": lambda: engine.prefill(request, image_embeds),
        # the same slot every call: each decodes the first answer token again
        "decode_step": lambda: decode_step(engine.stages["decode"], prefill.cache, first_token,
                                           prefill.next_position, slot, span),
        "adapter": lambda: engine.adapt(prefill.world_latent, spatial),
        # the whole step as the loop runs it (velocity, guidance, Euler update: one graph in a compile artifact), on
        # a copy of the latents so every call starts from the same ones
        "denoise_step": lambda: engine.program(engine.velocity, state,
                                               dataclasses.replace(loop, latents=loop.latents.clone()), 0),
        "vae": lambda: engine.decode_video(latents, request.geometry, torch.Generator("cpu").manual_seed(0)),
    }
    if spatial is None:
        del calls["spatial"]
    return {name: torch.inference_mode()(fn) for name, fn in calls.items()}


def step_flops(stage_flops: dict[str, int], settings: dict[str, Any], new_tokens: int) -> int:
    """Model FLOPs of a whole step from its stages: one denoising step per step (twice with guidance), one decode
    step per answer token after the first (the prefill's logits give the first)."""
    guided = 2 if settings["guidance_scale"] > 1 else 1
    return (stage_flops["vision"] + stage_flops.get("spatial", 0) + stage_flops["prefill"] + stage_flops["adapter"]
            + stage_flops["vae"] + stage_flops["denoise_step"] * settings["num_inference_steps"] * guided
            + stage_flops["decode_step"] * max(new_tokens - 1, 0))
