"""Stage suites: each stage of an engine as a no-argument callable on fixed inputs computed once beforehand."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # `STAGES` is read by the CLI's parser, which must not import torch
    from ..engine import Engine
    from .contenders import BenchInputs

STAGES = ("vision", "prefill", "decode_step", "adapter", "denoise_step", "vae")


def stage_calls(engine: Engine, inputs: BenchInputs) -> dict[str, Callable[[], Any]]:
    """`{stage: fn}` for one engine; the inputs of each stage come from the engine's own previous stages."""
    import torch
    with torch.inference_mode():
        request = engine.prepare(inputs.images, inputs.prompt, **inputs.settings)
        image_embeds = engine.vision(request)
        prefill = engine.prefill(request, image_embeds)
        first_token = torch.tensor([[int(prefill.logits[0].argmax())]])
        cond, cond_mask = engine.adapt(prefill.world_latent)
        generator = torch.Generator("cpu").manual_seed(request.settings.seed)
        grid = engine.latent_grid(request.settings)
        latents, first_frame = engine.initial_latents(request, grid, generator)
        timestep = engine.model.video_decoder.schedule(request.settings.num_inference_steps, grid.num_tokens
                                                       ).timesteps[0] * (1 - first_frame)  # [1, S]
        rope_scale = engine.rope_scale(request.settings)

    def decode_step():
        logits = engine.model.backbone.decode_step(first_token, prefill.next_position, prefill.cache)
        prefill.cache.crop(-1)  # drop the token again: every call decodes the same first answer token
        return logits

    calls = {
        "vision": lambda: engine.vision(request),
        "prefill": lambda: engine.prefill(request, image_embeds),
        "decode_step": decode_step,
        "adapter": lambda: engine.adapt(prefill.world_latent),
        "denoise_step": lambda: engine.model.video_decoder(latents, cond, cond_mask, timestep, grid, rope_scale),
        "vae": lambda: engine.decode_video(latents, grid, torch.Generator("cpu").manual_seed(0)),
    }
    return {name: torch.inference_mode()(fn) for name, fn in calls.items()}


def step_flops(stage_flops: dict[str, int], settings: dict[str, Any], new_tokens: int) -> int:
    """Model FLOPs of a whole step from its stages: one denoising step per step (twice with guidance), one decode
    step per answer token after the first (the prefill's logits give the first)."""
    guided = 2 if settings["guidance_scale"] > 1 else 1
    return (stage_flops["vision"] + stage_flops["prefill"] + stage_flops["adapter"] + stage_flops["vae"]
            + stage_flops["denoise_step"] * settings["num_inference_steps"] * guided
            + stage_flops["decode_step"] * max(new_tokens - 1, 0))
