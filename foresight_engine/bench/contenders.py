"""Who runs in a benchmark: the peers (plain library code on the same weights and inputs) and the engine's
configurations. Configurations are data: append an `EngineConfig` to `ENGINE_CONFIGS` (e.g. a built artifact
through `Engine.load(DIR)`, or `Engine(model, overlap=True)`) and every suite and the CLI pick it up.

`lossless=False` marks a contender that skips work (a step cache): it is reported in its own table, against the
peers' own lossy options (diffusers' cache hooks on the same pipeline), each with its frame PSNR against the fp32
reference, and compared at equal quality (`runner.LOSSY_MIN_PSNR_DB`)."""
from __future__ import annotations

import copy
import dataclasses
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from diffusers import FirstBlockCacheConfig, TaylorSeerCacheConfig

from .. import kernels
from ..engine import Engine
from ..engine.prediction import Timings
from ..models.families import ReferencePipeline, family
from ..models.glp import GLPModel
from .machine import BenchError

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


@dataclass(frozen=True)
class BenchInputs:
    """The same request for every contender."""

    images: list[np.ndarray]
    prompt: str
    settings: dict[str, Any]  # predict() keywords: height, width, num_frames, num_inference_steps, ...

    @classmethod
    def for_engine(cls, engine: Engine, seed: int = 0) -> "BenchInputs":
        """One random 3:4 image and a short prompt at the preset's default generation settings."""
        g = engine.config.generation
        image = np.random.default_rng(seed).integers(0, 256, size=(72, 96, 3), dtype=np.uint8)
        settings = dict(height=g.height, width=g.width, num_frames=g.num_frames,
                        num_inference_steps=g.num_inference_steps, guidance_scale=g.guidance_scale,
                        max_new_tokens=g.max_new_tokens, seed=seed)
        return cls(images=[image], prompt="What happens next? Describe the motion.", settings=settings)


@dataclass
class StepResult:
    token_ids: list[int]
    frames: np.ndarray  # uint8 [F, H, W, 3]
    timings: Any  # engine: Prediction.timings; peers: Timings of their own phases


StepFn = Callable[[], StepResult]


@dataclass
class BenchContext:
    """One preset's shared state: the fp32 reference engine (every contender starts from its weights), the
    inputs, and the engines built so far (built once, shared by the stage and end-to-end suites)."""

    preset: str
    seed: int = 0
    device: str = "cpu"  # where every contender runs
    base: Engine = None  # type: ignore[assignment]
    inputs: BenchInputs = None  # type: ignore[assignment]
    engines: dict[str, Engine] = field(default_factory=dict)
    models: dict[str, GLPModel] = field(default_factory=dict)  # cast copies of the reference weights
    # built artifacts persist across runs (the cache key decides what is rebuilt)
    artifact_root: Path = field(default_factory=lambda: Path(os.environ.get("FORESIGHT_BENCH_ARTIFACTS",
                                                                            ".benchmarks/artifacts")))
    stage_flops: dict[str, int] = field(default_factory=dict)  # model FLOPs per stage call, counted once
    load_s: dict[str, float] = field(default_factory=dict)  # artifact -> Engine.load seconds
    _reference: "StepResult | None" = None

    def __post_init__(self) -> None:
        if self.base is None:
            self.base = Engine.from_preset(self.preset, seed=self.seed, device=self.device)
        if self.inputs is None:
            self.inputs = BenchInputs.for_engine(self.base, self.seed)

    def model_at(self, precision: str) -> GLPModel:
        """The reference weights at `precision`: the reference model itself for fp32, else a cast copy."""
        if precision not in DTYPES:
            raise BenchError(f"no eager cast for precision {precision!r}; choose one of {sorted(DTYPES)}")
        if precision == "fp32":
            return self.base.model
        if precision not in self.models:  # one cast copy per precision, shared by its configurations
            model = copy.deepcopy(self.base.model)
            for module in model.components().values():
                module.to(DTYPES[precision])
            self.models[precision] = model
        return self.models[precision]

    def reference(self) -> StepResult:
        """The fp32 eager reference engine's output on the inputs (computed once): what every contender's frames are
        held to (`psnr_vs_reference`)."""
        if self._reference is None:
            engine = Engine(self.base.model, static=False, overlap=False)
            pred = engine.predict(self.inputs.images, self.inputs.prompt, **self.inputs.settings)
            self._reference = StepResult(pred.token_ids, pred.frames, pred.timings)
        return self._reference

    def engine(self, config: "EngineConfig") -> Engine:
        if config.name not in self.engines:
            self.engines[config.name] = config.build(self)
        return self.engines[config.name]


@dataclass(frozen=True)
class EngineConfig:
    """A named engine configuration: `build(ctx)` returns a ready engine with the reference's weights."""

    name: str
    precision: str
    build: Callable[[BenchContext], Engine]
    description: str = ""
    role: str = "engine"
    lossless: bool = True  # False: skips work (a step cache)

    def step_fn(self, ctx: BenchContext) -> StepFn:
        engine = ctx.engine(self)
        inputs = ctx.inputs

        def step() -> StepResult:
            pred = engine.predict(inputs.images, inputs.prompt, **inputs.settings)
            return StepResult(pred.token_ids, pred.frames, pred.timings)
        return step


@dataclass(frozen=True)
class Peer:
    """Plain library code on the same weights and inputs; `build(ctx)` returns the step function."""

    name: str
    precision: str
    build: Callable[[BenchContext], StepFn]
    description: str = ""
    role: str = "peer"
    lossless: bool = True

    def step_fn(self, ctx: BenchContext) -> StepFn:
        return self.build(ctx)


# ------------------------------------------------------------------------------------------------ peers
def library_step(engine: Engine, pipe: ReferencePipeline, inputs: BenchInputs) -> StepFn:
    """transformers `generate()` for the text, then the world latent (vision + prefill with the query tokens +
    adapter, + DINOv2 with the hybrid encoder) and the decoder family's diffusers image-to-video pipeline
    (`families.py`) for the video: the libraries glued together, one after the other; plain library code, so
    without the engine's custom ops (`kernels.set_wiring("off")`)."""
    s = inputs.settings

    @torch.inference_mode()
    @kernels.set_wiring("off")
    def step() -> StepResult:
        timings, t0 = Timings(), time.perf_counter()
        request = engine.prepare(inputs.images, inputs.prompt, **s)
        enc = dict(input_ids=request.input_ids, attention_mask=torch.ones_like(request.input_ids),
                   pixel_values=request.pixel_values.to(engine.model.vision_tower.dtype),
                   image_grid_thw=request.image_grid_thw, mm_token_type_ids=request.mm_token_type_ids)
        enc = {k: v.to(engine.device) for k, v in enc.items()}
        t = time.perf_counter()
        out = engine.model.qwen.generate(**enc, max_new_tokens=s["max_new_tokens"], do_sample=False)
        timings.stages["text"] = time.perf_counter() - t
        t = time.perf_counter()
        prefill = engine.prefill(request, engine.vision(request))
        cond, mask = engine.adapt(prefill.world_latent, engine.spatial(request))
        timings.stages["world_latent"] = time.perf_counter() - t
        t = time.perf_counter()
        video = pipe(request.images[-1], cond, mask, generator=torch.Generator("cpu").manual_seed(s["seed"]),
                     frame_rate=engine.config.generation.frame_rate, height=s["height"], width=s["width"],
                     num_frames=s["num_frames"], num_inference_steps=s["num_inference_steps"],
                     guidance_scale=s["guidance_scale"])  # [F, H, W, 3] in [0, 1]
        timings.stages["video"] = time.perf_counter() - t
        timings.total = time.perf_counter() - t0
        frames = (np.asarray(video, dtype=np.float32) * 255).round().astype(np.uint8)
        return StepResult(out[0, request.input_ids.shape[1]:].tolist(), frames, timings)
    return step


def _naive(ctx: BenchContext) -> StepFn:
    model = ctx.base.model
    return library_step(ctx.base, family(model.config).reference_pipeline(model), ctx.inputs)


def _best_peer(ctx: BenchContext) -> StepFn:
    """The diffusion-fast recipe: bf16 weights, SDPA (already the default) and torch.compile of the transformer
    (max-autotune where a GPU can autotune; the default mode on a CPU, where autotuning costs minutes). Not
    fullgraph: HunyuanVideo-1.5's forward reads a value back and regroups tokens by mask (graph breaks)."""
    model = ctx.model_at("bf16")
    mode = "max-autotune" if ctx.base.device.type == "cuda" else None
    compiled = torch.compile(model.video_decoder.transformer, mode=mode)
    return library_step(Engine(model), family(model.config).reference_pipeline(model, compiled), ctx.inputs)


def _cached_peer(cache: Any) -> Callable[[BenchContext], StepFn]:
    """The peer with one of diffusers' own step caches (`transformer.enable_cache`) on a bf16 copy of the decoder's
    transformer, eager: the cache hooks decide per step on the host, which fullgraph compilation cannot trace."""
    def build(ctx: BenchContext) -> StepFn:
        model = ctx.model_at("bf16")
        transformer = copy.deepcopy(model.video_decoder.transformer)
        transformer.enable_cache(cache)
        return library_step(Engine(model), family(model.config).reference_pipeline(model, transformer), ctx.inputs)
    return build


PEERS: list[Peer] = [
    Peer("naive", "fp32", _naive, "transformers generate() then the decoder's diffusers image-to-video pipeline, "
                                  "fp32 eager"),
    Peer("best-peer", "bf16", _best_peer, "the same in bf16 with torch.compile of the decoder's transformer"),
    *(Peer(f"peer-fbcache-{t}", "bf16", _cached_peer(FirstBlockCacheConfig(threshold=t)),
           f"the peer in bf16 with diffusers' FirstBlockCacheConfig(threshold={t})", lossless=False)
      for t in (0.05, 0.1, 0.2)),
    Peer("peer-taylorseer-2", "bf16",
         _cached_peer(TaylorSeerCacheConfig(cache_interval=2, disable_cache_before_step=2)),
         "the peer in bf16 with diffusers' TaylorSeerCacheConfig(cache_interval=2, disable_cache_before_step=2)",
         lossless=False),
]

ENGINE_CONFIGS: list[EngineConfig] = [
    EngineConfig("eager-fp32", "fp32", lambda ctx: Engine(ctx.model_at("fp32"), static=False, overlap=False),
                 "the reference Engine: the plain transformer forward each step, one stage after the other"),
    EngineConfig("eager-bf16", "bf16", lambda ctx: Engine(ctx.model_at("bf16"), static=False, overlap=False),
                 "the reference Engine with every component cast to bf16"),
    EngineConfig("runtime-fp32", "fp32", lambda ctx: Engine(ctx.model_at("fp32")),
                 "the static denoising plan, text overlapped with video"),
    EngineConfig("runtime-bf16", "bf16", lambda ctx: Engine(ctx.model_at("bf16")),
                 "the runtime with every component cast to bf16"),
    EngineConfig("runtime-bf16-sequential", "bf16", lambda ctx: Engine(ctx.model_at("bf16"), overlap=False),
                 "the runtime in bf16 without the text/video overlap"),
    *(EngineConfig(f"runtime-bf16-stepcache-{t}", "bf16",
                   lambda ctx, t=t: Engine(ctx.model_at("bf16"), step_cache=t),
                   f"the runtime in bf16 with the first-block step cache (threshold {t})", lossless=False)
      for t in (0.2, 0.4)),
    EngineConfig("compile-bf16", "bf16", lambda ctx: _artifact_engine(ctx, "compile", "bf16"),
                 "a built artifact: AOTInductor packages in bf16, the whole denoising step one graph (Engine.load), "
                 "overlapped"),
    EngineConfig("compile-int8", "int8", lambda ctx: _artifact_engine(ctx, "compile", "int8"),
                 "a built artifact: AOTInductor packages, the two transformers' Linears int8 (oneDNN), the rest "
                 "bf16 (Engine.load), overlapped"),
    EngineConfig("onnx-fp32", "fp32", lambda ctx: _artifact_engine(ctx, "onnx", "fp32"),
                 "a built artifact: ONNX Runtime stages in fp32 (Engine.load), overlapped"),
]


# GPU only (`bench --device cuda`, `make gpu-check`): built TensorRT / Torch-TensorRT stages, the denoising loop
# replayed as one CUDA graph
GPU_ENGINE_CONFIGS: list[EngineConfig] = [
    EngineConfig("tensorrt-bf16", "bf16", lambda ctx: _artifact_engine(ctx, "tensorrt", "bf16", cuda_graphs=True),
                 "a built artifact: TensorRT plans in bf16, the denoising loop as one CUDA graph"),
    EngineConfig("tensorrt-fp8", "fp8", lambda ctx: _artifact_engine(ctx, "tensorrt", "fp8", cuda_graphs=True),
                 "a built artifact: TensorRT plans, FP8 Linears (ModelOpt calibration), one CUDA graph"),
    EngineConfig("torch-tensorrt-bf16", "bf16",
                 lambda ctx: _artifact_engine(ctx, "torch-tensorrt", "bf16", cuda_graphs=True),
                 "a built artifact: Torch-TensorRT stages in bf16, one CUDA graph"),
]


def _artifact_engine(ctx: BenchContext, backend: str, precision: str, **runtime) -> Engine:
    """Build (or find in the content-keyed cache) the preset's artifact for the bench's request (its image size
    too: the vision stage is built per image grid), then load it like a user would. The gate is off: accuracy is
    the tests' job, and the bench reports the error it sees anyway."""
    from ..builders.build import build  # the bench is a builder's client; the engine itself never imports builders
    from ..models.export_spec import BuildShape
    directory = ctx.artifact_root / f"{ctx.preset}-seed{ctx.seed}-{backend}-{precision}-{ctx.device}"
    s = ctx.inputs.settings
    shape = dataclasses.replace(BuildShape.for_config(ctx.base.config, s["height"], s["width"], s["num_frames"],
                                                      image_size=ctx.inputs.images[-1].shape[:2]),
                                guidance=s["guidance_scale"] > 1)
    result = build(ctx.base.model, directory, backend=backend, precision=precision, shape=shape, gate=False,
                   device=ctx.device)
    start = time.perf_counter()
    engine = Engine.load(result.directory, device=ctx.device, **runtime)
    ctx.load_s[f"{backend}-{precision}"] = time.perf_counter() - start  # what a user waits for before a request
    return engine


def contenders(names: list[str] | None = None, device: str = "cpu") -> list[Peer | EngineConfig]:
    """Peers first (ratios need them), then engine configurations (the GPU ones on a GPU); `names` selects."""
    everyone = [*PEERS, *ENGINE_CONFIGS, *(GPU_ENGINE_CONFIGS if device.startswith("cuda") else [])]
    if names is None:
        return everyone
    known = {c.name: c for c in everyone}
    unknown = [n for n in names if n not in known]
    if unknown:
        raise BenchError(f"unknown configuration(s) {unknown}; known: {sorted(known)}")
    return [known[n] for n in names]
