"""`foresight-engine plan`: a roofline projection of one reasoning step of a preset on a GPU it never ran on.

Every stage is run once on the meta device (the real transformers/diffusers modules, no weights, no memory) under
the counters of `flops.py`; `projection.py` turns the counts into times: per stage max(compute, memory) with the
GEMMs at the precision the policy gives the component and attention at the 16-bit rate, and the step with the text
branch overlapped with the video branch ON ONE GPU (they share its compute and bandwidth). Two figures: the bound
at the datasheet peaks, and a realistic one with stated achievable fractions. A projection, not a measurement.
The video stages are the decoder family's own stage wrappers (`export_specs`: what builders export), so a new
family is counted without code here.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from types import SimpleNamespace

import torch
from transformers.vision_utils import get_vision_position_ids, get_vision_window_index

from ..config import ModelConfig, preset
from ..errors import ConfigError
from ..models.backbone import Backbone
from ..models.export_spec import BuildShape, export_specs
from ..models.families import family
from ..models.glp import build_adapter
from ..models.qwen_vl import SpecialTokenIds, build_qwen_vl
from ..models.spatial_encoder import SpatialEncoder
from .flops import OpCount, count
from .gpus import GPUSpec, gpu as gpu_spec
from .op_families import FAMILIES
from .projection import IDEAL, REALISTIC, policy_precision, project_step

# Qwen2.5-VL's special token ids (the count does not depend on them, the model config needs them).
_QWEN_TOKEN_IDS = SpecialTokenIds(image=151655, video=151656, vision_start=151652, vision_end=151653, eos=151645,
                                  pad=151643)
WEIGHT_BYTES = {"fp8": 1.0, "fp16": 2.0, "bf16": 2.0}
ACTIVATION_BYTES = 2.0  # activations, KV cache and attention stay 16-bit in every policy here (fp32 components: 4)
STAGE_COMPONENT = {"vision": "vision", "spatial": "spatial", "prefill": "language", "text": "language",
                   "adapter": "adapter", "denoise": "transformer", "vae": "vae"}


@dataclass(frozen=True)
class PlanSettings:
    height: int = 512
    width: int = 768
    num_frames: int = 121
    steps: int = 8
    new_tokens: int = 128
    prompt_tokens: int = 150  # text tokens of the chat prompt besides the image's
    image_side: int = 448  # one square input image
    guidance_scale: float = 1.0  # the distilled schedule runs without classifier-free guidance

    @classmethod
    def for_config(cls, config: ModelConfig, **overrides) -> "PlanSettings":
        """The preset's own request defaults (size, frames, steps, answer length, largest image); for `full`
        these equal the class defaults. `overrides` that are None keep the default."""
        gen = config.generation
        values = dict(height=gen.height, width=gen.width, num_frames=gen.num_frames, steps=gen.num_inference_steps,
                      new_tokens=gen.max_new_tokens, image_side=math.isqrt(config.processor.max_pixels),
                      guidance_scale=gen.guidance_scale)
        return cls(**values | {k: v for k, v in overrides.items() if v is not None})

    def check(self, config: ModelConfig) -> None:
        for name in ("height", "width"):
            if getattr(self, name) % config.spatial_step:
                raise ConfigError(f"plan: {name}={getattr(self, name)} is not a multiple of {config.spatial_step}")
        if (self.num_frames - 1) % config.temporal_step:
            raise ConfigError(f"plan: num_frames={self.num_frames} is not {config.temporal_step}*k+1")
        for name in ("steps", "new_tokens", "prompt_tokens", "image_side"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"plan: {name}={getattr(self, name)} must be > 0")


@dataclass
class StageCount:
    """One stage counted on the meta device: cost of one call, and how many calls a step makes."""

    name: str
    per_call: OpCount
    calls: int


@dataclass
class StagePlan:
    name: str
    calls: int
    flops: float  # all calls
    bytes: float  # all calls
    projected_s: float
    bound: str  # "compute" | "memory"
    precision: str


@dataclass
class Plan:
    preset: str
    gpu: str
    gpu_label: str
    precision: str
    settings: dict
    stages: list[StagePlan]
    projected_step_s: float  # with text/video overlap on one GPU: the bound at datasheet peaks
    projected_sequential_s: float
    realistic_step_s: float  # the same at the achievable fractions of `projection.REALISTIC` (sources in `extra`)
    realistic_sequential_s: float
    weight_memory_bytes: float
    activation_memory_bytes: float
    kv_cache_bytes: float
    fits_in_memory: bool
    note: str = ("PROJECTION (roofline lower bound from datasheet peaks, counted on the meta device), "
                 "not a measurement")
    extra: dict = field(default_factory=dict)
    # {family: {stage: projected seconds of all calls}}: op by op, nothing fused (op_families.FamilyCounter)
    families: dict = field(default_factory=dict)

    def to_dict(self) -> dict:
        return asdict(self)


def _token_ids(config: ModelConfig) -> SpecialTokenIds:
    """Qwen's ids where the vocabulary holds them; a smaller vocabulary (tiny, small: the tokenizer is built
    locally) gets its last six ids, which every embedding has (padding_idx must lie inside it)."""
    vocab = config.text.vocab_size
    if vocab > max(vars(_QWEN_TOKEN_IDS).values()):
        return _QWEN_TOKEN_IDS
    return SpecialTokenIds(*range(vocab - 6, vocab))


def meta_components(config: ModelConfig) -> SimpleNamespace:
    """The stack's components on the meta device, with the attributes stage wrappers read (`spec.wrap`)."""
    ids = _token_ids(config)
    with torch.device("meta"):
        qwen = build_qwen_vl(config, ids)
        backbone = Backbone(qwen.model.language_model, qwen.lm_head, config.adapter.num_query_tokens, ids.image)
        adapter = build_adapter(config)
        video_decoder, vae = family(config).build(config)
        spatial = None if config.spatial_encoder is None else SpatialEncoder.build(config.spatial_encoder)
    return SimpleNamespace(visual=qwen.model.visual, backbone=backbone, adapter=adapter, video_decoder=video_decoder,
                           vae=vae, spatial_encoder=spatial)


def count_stage(config: ModelConfig, model: SimpleNamespace, name: str, shape: BuildShape) -> OpCount:
    """One call of an exported stage's wrapper on its sample inputs' shapes (meta tensors)."""
    spec = export_specs(config)[name]
    inputs = tuple(x.to("meta") for x in spec.sample_inputs(shape))
    return count(spec.wrap(model, shape), *inputs)[0]


def count_stages(config: ModelConfig, settings: PlanSettings) -> tuple[list[StageCount], dict[str, int]]:
    """Count every stage of one step on the meta device; also returns parameter counts per component."""
    settings.check(config)
    model = meta_components(config)
    visual, backbone, adapter = model.visual, model.backbone, model.adapter
    meta = torch.device("meta")
    v = config.vision
    side = settings.image_side // (v.patch_size * v.spatial_merge_size) * v.spatial_merge_size  # patches per side
    grid_thw = torch.tensor([[1, side, side]])
    n_patches = side * side
    # index tables are computed on the CPU (they are data, not shapes) and handed over as meta tensors
    positions = get_vision_position_ids(grid_thw, v.spatial_merge_size)
    window_index, cu_windows = get_vision_window_index(grid_thw, spatial_merge_size=v.spatial_merge_size,
                                                       window_size=v.window_size, patch_size=v.patch_size)
    pixels = torch.empty(n_patches, 3 * v.temporal_patch_size * v.patch_size ** 2, device=meta)
    vision, _ = count(lambda: visual(pixels, grid_thw=grid_thw, position_ids=positions.to(meta),
                                     window_index=window_index.to(meta), cu_window_seqlens=cu_windows).pooler_output)

    prompt_len = settings.prompt_tokens + n_patches // v.spatial_merge_size ** 2
    t = config.text
    embeds = torch.empty(1, prompt_len, t.hidden_size, device=meta)
    position_ids = torch.arange(prompt_len, device=meta).view(1, 1, -1).expand(3, 1, -1)
    no_past = torch.empty(t.num_hidden_layers, 1, t.num_key_value_heads, 0, t.head_dim, device=meta)
    prefill, (_, world_latent, keys, values) = count(backbone.prefill, embeds, position_ids, no_past, no_past)
    token = torch.zeros(1, 1, dtype=torch.long, device=meta)
    # one decode step over the prompt's cache stands for all of them (the cache grows by new_tokens at most)
    text, _ = count(backbone.decode, token, torch.full((1,), prompt_len, device=meta), keys, values,
                    torch.tensor(prompt_len, device=meta))
    shape = BuildShape(height=settings.height, width=settings.width, num_frames=settings.num_frames,
                       guidance=settings.guidance_scale > 1)
    spatial = []
    if model.spatial_encoder is not None:
        spatial = [StageCount("spatial", count_stage(config, model, "spatial", shape), 1)]
        features = torch.empty(1, config.spatial_encoder.num_patches, config.spatial_encoder.hidden_size, device=meta)
        adapt, _ = count(adapter, world_latent, features)
    else:
        adapt, _ = count(adapter, world_latent)
    denoise = count_stage(config, model, "denoise", shape)
    decode = count_stage(config, model, "vae_decode", shape)

    stages = [StageCount("vision", vision, 1), *spatial, StageCount("prefill", prefill, 1),
              StageCount("text", text, settings.new_tokens), StageCount("adapter", adapt, 1),
              StageCount("denoise", denoise, settings.steps), StageCount("vae", decode, 1)]
    params = {"vision": _numel(visual), "language": _numel(backbone), "adapter": _numel(adapter),
              "transformer": _numel(model.video_decoder), "vae": _numel(model.vae)}
    if model.spatial_encoder is not None:
        params["spatial"] = _numel(model.spatial_encoder)
    kv_tokens = prompt_len + settings.new_tokens
    params["kv_cache_elements"] = 2 * t.num_hidden_layers * t.num_key_value_heads * t.head_dim * kv_tokens
    return stages, params


def _numel(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def stage_precision(component: str, precision: str) -> str:
    """What `precision`'s policy runs `component` in (under fp8 the vision tower, adapter and VAE stay bf16)."""
    return policy_precision(component, precision)


def element_bytes(precision: str) -> tuple[float, float]:
    """(weight, activation) bytes per element of a component running in `precision`."""
    return (4.0, 4.0) if precision == "fp32" else (WEIGHT_BYTES[precision], ACTIVATION_BYTES)


def weight_memory(params: dict[str, int], precision: str) -> float:
    """Bytes of all weights under `precision`'s policy."""
    return sum(n * element_bytes(stage_precision(c, precision))[0] for c, n in params.items()
               if c != "kv_cache_elements")


def project(stages: list[StageCount], params: dict[str, int], spec: GPUSpec, precision: str,
            preset_name: str, settings: PlanSettings) -> Plan:
    """Roofline time per stage, step latency with and without overlap, and memory at `precision`."""
    if precision not in WEIGHT_BYTES:
        raise ConfigError(f"plan: precision={precision!r} is not one of {sorted(WEIGHT_BYTES)}")
    spec.peak_flops(precision)  # raises when the GPU lacks it (A100 and FP8)
    ideal, realistic = (project_step(stages, spec, precision, eff, STAGE_COMPONENT, element_bytes)
                        for eff in (IDEAL, REALISTIC))
    plans, families = [], {}
    for s in stages:
        t = ideal["stages"][s.name]
        plans.append(StagePlan(s.name, s.calls, t["gemm_flops"] + t["attention_flops"], t["bytes"], t["seconds"],
                               "compute" if t["compute_s"] >= t["memory_s"] else "memory", t["precision"]))
        p = t["precision"]
        for family, c in s.per_call.by_family.items():
            # GEMMs and convolutions run at the stage's precision, attention and the rest in 16 bits
            peak = spec.peak_flops(p if family in ("GEMMs", "VAE convolutions") else
                                   ("fp16" if p == "fp16" else "bf16"))
            seconds = max(c.flops / peak, c.bytes(*element_bytes(p)) / spec.bandwidth) * s.calls
            families.setdefault(family, {})[s.name] = seconds
    weights = weight_memory(params, precision)
    kv = params["kv_cache_elements"] * ACTIVATION_BYTES
    largest = max(s.per_call.largest_op_elements for s in stages) * ACTIVATION_BYTES
    activations = kv + largest
    return Plan(preset=preset_name, gpu=spec.name, gpu_label=spec.label, precision=precision,
                settings=asdict(settings), stages=plans, projected_step_s=ideal["overlapped_s"],
                projected_sequential_s=ideal["sequential_s"], realistic_step_s=realistic["overlapped_s"],
                realistic_sequential_s=realistic["sequential_s"], weight_memory_bytes=weights,
                activation_memory_bytes=activations, kv_cache_bytes=kv,
                fits_in_memory=weights + activations < spec.memory_gb * 1e9,
                extra={"peak_tflops": spec.peak_tflops, "bandwidth_tb_s": spec.bandwidth_tb_s,
                       "projection": {"ideal": ideal, "realistic": realistic},
                       "weight_memory_bytes_by_precision": {q: weight_memory(params, q) for q in WEIGHT_BYTES},
                       "parameters": {k: v for k, v in params.items() if k != "kv_cache_elements"}},
                families=families)


def plan(preset_name: str = "full", gpu: str = "h100", precision: str = "fp8",
         settings: PlanSettings | None = None) -> Plan:
    spec = gpu_spec(gpu)
    spec.peak_flops(precision)  # fail before counting anything
    config = preset(preset_name)
    settings = settings or PlanSettings.for_config(config)
    stages, params = count_stages(config, settings)
    result = project(stages, params, spec, precision, preset_name, settings)
    figure = family(config).published
    if figure is not None and family(config).full_preset == preset_name:
        # the same counts on the GPU and precision the figure was quoted for: how far above the lower bound it is
        there = project(stages, params, gpu_spec(figure.gpu), figure.precision, preset_name, settings)
        video = sum(st.projected_s for st in there.stages if st.name in ("adapter", "denoise", "vae"))
        result.extra["published"] = {**asdict(figure), "projected_video_s": video,
                                     "projected_step_s": there.projected_step_s,
                                     "fits_in_memory": there.fits_in_memory}
    return result


def format_families(p: Plan) -> str:
    """Projected ms per operator family and stage, op by op (no fusion), and each family's share of the step."""
    stages = [st.name for st in p.stages]
    total = sum(sum(v.values()) for v in p.families.values()) or 1.0
    lines = [f"by operator family, op by op (nothing fused): projected ms on {p.gpu_label} at {p.precision}",
             f"{'family':<18}" + "".join(f"{s:>9}" for s in stages) + f"{'step ms':>10}{'share':>8}"]
    for family in FAMILIES:
        row = p.families.get(family, {})
        if not row:
            continue
        lines.append(f"{family:<18}" + "".join(f"{row.get(s, 0.0) * 1e3:>9.1f}" for s in stages)
                     + f"{sum(row.values()) * 1e3:>10.1f}{sum(row.values()) / total * 100:>7.1f}%")
    return "\n".join(lines)


def format_plan(p: Plan) -> str:
    s = p.settings
    lines = [f"PROJECTION for preset {p.preset} on {p.gpu_label} at {p.precision} — roofline lower bound from "
             f"datasheet peaks, not a measurement",
             f"{s['num_frames']}x{s['height']}x{s['width']}, {s['steps']} steps, guidance {s['guidance_scale']}, "
             f"{s['new_tokens']} new tokens, one {s['image_side']}px image + {s['prompt_tokens']} text tokens",
             f"{'stage':<9}{'calls':>6}{'TFLOP':>10}{'GB moved':>10}{'precision':>10}{'bound':>9}{'ms':>10}"]
    for st in p.stages:
        lines.append(f"{st.name:<9}{st.calls:>6}{st.flops / 1e12:>10.2f}{st.bytes / 1e9:>10.2f}{st.precision:>10}"
                     f"{st.bound:>9}{st.projected_s * 1e3:>10.1f}")
    lines += format_projection(p)
    lines += [f"weights {p.weight_memory_bytes / 1e9:.1f} GB + activations >= "
              f"{p.activation_memory_bytes / 1e9:.2f} GB (KV cache {p.kv_cache_bytes / 1e9:.2f} GB); fits in "
              f"{p.gpu_label}: {'yes' if p.fits_in_memory else 'no'}",
              "weights by precision: " + ", ".join(
                  f"{q} {b / 1e9:.1f} GB" for q, b in p.extra["weight_memory_bytes_by_precision"].items())]
    if "published" in p.extra:
        f = p.extra["published"]
        lines += [f"published: ~{f['seconds']:g} s per clip on {f['gpu']} at {f['precision']} ({f['source']}); this "
                  f"plan on {f['gpu']} at {f['precision']}: video (adapter + denoise + VAE) >= "
                  f"{f['projected_video_s']:.1f} s, whole step >= {f['projected_step_s']:.1f} s, fits in its memory: "
                  f"{'yes' if f['fits_in_memory'] else 'no'} -> the quote is "
                  f"{f['seconds'] / f['projected_video_s']:.1f}x the video lower bound"]
    return "\n".join(lines)


def format_projection(p: Plan) -> list[str]:
    """The step figures: the bound at datasheet peaks and the realistic figure, with its fractions' sources."""
    ideal, real = p.extra["projection"]["ideal"], p.extra["projection"]["realistic"]
    eff = real["efficiency"]
    return [
        "(stage ms: datasheet peaks; GEMMs at the stage's precision, attention at the 16-bit rate)",
        f"{'step, sequential:':<43}bound {ideal['sequential_s'] * 1e3:6.0f} ms   realistic "
        f"{real['sequential_s'] * 1e3:6.0f} ms",
        f"{'step, text overlapped with video, one GPU:':<43}bound {ideal['overlapped_s'] * 1e3:6.0f} ms   realistic "
        f"{real['overlapped_s'] * 1e3:6.0f} ms",
        f"  overlapped part >= max(compute {ideal['overlap_compute_s'] * 1e3:.0f} ms summed over both branches, "
        f"memory {ideal['overlap_memory_s'] * 1e3:.0f} ms summed, text branch {ideal['text_branch_s'] * 1e3:.0f} ms, "
        f"video branch {ideal['video_branch_s'] * 1e3:.0f} ms) at the peaks",
        f"  realistic fractions: GEMM {eff['gemm']:.0%}, attention {eff['attention']:.0%}, bandwidth "
        f"{eff['bandwidth']:.0%} (sources: foresight_engine/bench/projection.py)"]
