"""The benchmark suite outside pytest (`foresight-engine bench`), and what both it and bench/ record.

Timing: warm-up rounds, then rounds of one call each, `time.perf_counter` around the call (CUDA synchronised on a
GPU). Ratios compare medians measured in the same process on the same weights and inputs.
"""
from __future__ import annotations

import logging
import statistics
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch

import numpy as np

from ..engine import Engine
from ..verify.metrics import psnr_from_mse, ssim_per_frame
from .contenders import BenchContext, EngineConfig, Peer, StepResult, contenders
from .flops import count_flops
from .machine import gpu_telemetry, machine_info, peak_rss_bytes, peaks
from .stages import STAGES, stage_calls, step_flops
from .timeline import spans_of

log = logging.getLogger(__name__)

# Speed targets, reported as ratios and never asserted; they are set for the small preset.
TARGET_PRESET = "small"
TARGET_LOSSLESS_VS_NAIVE = 3.0
TARGET_LOSSLESS_VS_BEST_PEER = 1.5
TARGET_LOSSY_VS_NAIVE = 5.0
TARGET_LOSSY_VS_BEST_LOSSY_PEER = 1.5
TARGET_DENOISE_FRACTION_OF_BF16_PEAK = 0.6
# a lossy contender (engine or peer) counts only at or above this frame PSNR against the fp32 reference: lossy
# configurations are compared at equal quality
LOSSY_MIN_PSNR_DB = 40.0
PSNR_IDENTICAL_DB = 100.0  # what a pixel-identical clip reports (JSON has no infinity)


@dataclass(frozen=True)
class Rounds:
    warmup: int
    rounds: int


@dataclass(frozen=True)
class SuiteOptions:
    preset: str
    quick: bool = False
    configs: tuple[str, ...] | None = None  # None: every peer and engine configuration
    stages: tuple[str, ...] = STAGES
    seed: int = 0
    device: str = "cpu"

    @property
    def end_to_end(self) -> Rounds:
        return Rounds(1, 3) if self.quick else Rounds(2, 5)

    @property
    def stage(self) -> Rounds:
        return Rounds(1, 3) if self.quick else Rounds(2, 10)


@dataclass
class Result:
    name: str  # "<suite>/<configuration>", e.g. "end_to_end/eager-bf16", "stage/denoise_step/eager-fp32"
    suite: str
    config: str
    role: str
    precision: str
    preset: str
    median_s: float
    p90_s: float
    mean_s: float
    times_s: list[float]
    flops: int | None = None
    achieved_flops_per_s: float | None = None
    fraction_of_peak: float | None = None  # of this machine's measured matmul peak at `precision`
    extra: dict[str, Any] = field(default_factory=dict)
    lossless: bool = True
    psnr_vs_reference: float | None = None  # end to end: frames vs the fp32 eager reference's, dB
    ssim_vs_reference: float | None = None
    stages_s: dict[str, float] = field(default_factory=dict)  # end to end: the last step's seconds per stage


def measure(fn: Callable[[], Any], rounds: Rounds) -> tuple[list[float], Any]:
    """Seconds of each timed round, and the last round's result."""
    return measure_interleaved({"fn": fn}, rounds)["fn"]


def measure_interleaved(fns: dict[str, Callable[[], Any]], rounds: Rounds) -> dict[str, tuple[list[float], Any]]:
    """Like `measure` for several contenders, timed round-robin (round 1 of each, then round 2 of each, ...):
    a shared machine's drift in speed then lands on every contender alike, so their ratios hold."""
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    last: dict[str, Any] = {}
    for name, fn in fns.items():
        for _ in range(rounds.warmup):
            last[name] = fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(rounds.rounds):
        for name, fn in fns.items():
            sync()
            start = time.perf_counter()
            last[name] = fn()
            sync()
            times[name].append(time.perf_counter() - start)
    return {name: (times[name], last.get(name)) for name in fns}


def p90(times: list[float]) -> float:
    ordered = sorted(times)
    return ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]


def throughput_info(flops: int | None, median_s: float, precision: str) -> dict[str, float | None]:
    """Achieved FLOP/s and its fraction of the measured matmul peak at `precision` (None where no peak is measured
    for that precision)."""
    if not flops:
        return {"achieved_flops_per_s": None, "fraction_of_peak": None}
    achieved = flops / median_s
    peak = peaks().get(precision)
    return {"achieved_flops_per_s": achieved, "fraction_of_peak": achieved / peak if peak else None}


def record_extra(precision: str) -> dict[str, Any]:
    """Per-result facts: peak RSS so far and, on a GPU, its telemetry."""
    return {"precision": precision, "peak_rss_bytes": peak_rss_bytes(), **gpu_telemetry()}


def model_stage_flops(ctx: BenchContext) -> dict[str, int]:
    """Model FLOPs of one call of each stage, counted once on the fp32 eager reference (the plain transformer forward
    each denoising step; cached in the context)."""
    if not ctx.stage_flops:
        reference = Engine(ctx.base.model, static=False, overlap=False)
        ctx.stage_flops.update({name: count_flops(fn) for name, fn in stage_calls(reference, ctx.inputs).items()})
    return ctx.stage_flops


@dataclass
class SuiteReport:
    preset: str
    machine: dict
    peaks_flops_per_s: dict[str, float]
    results: list[Result]
    speedup_vs_naive: dict[str, float]
    speedup_vs_best_peer: dict[str, float]
    targets: list[dict]
    timelines: dict[str, Any] = field(default_factory=dict)  # configuration -> the last end-to-end timings
    wall_s: float = 0.0
    configs: dict[str, dict] = field(default_factory=dict)  # end to end, per contender: what scripts read
    best_lossless: dict | None = None
    best_lossy: dict | None = None
    load_s: dict[str, float] = field(default_factory=dict)  # artifact -> Engine.load seconds (no compilation)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["timelines"] = {name: _timings_dict(t) for name, t in self.timelines.items()}
        return d


def _timings_dict(timings: Any) -> dict:
    return {"spans": [asdict(s) for s in spans_of(timings)]}


def speedups(results: list[Result], baseline: str) -> dict[str, float]:
    """baseline median / median for every end-to-end result; {} when the baseline did not run."""
    e2e = {r.config: r.median_s for r in results if r.suite == "end_to_end"}
    if baseline not in e2e:
        return {}
    return {name: e2e[baseline] / median for name, median in e2e.items()}


def _target(what: str, target: float, value: float | None) -> dict:
    return {"what": what, "target": target, "value": value, "met": value is not None and value >= target}


def targets(results: list[Result], best_lossless: dict | None, best_lossy: dict | None) -> list[dict]:
    """The speed targets against this run's ratios (none for presets other than TARGET_PRESET)."""
    if not any(r.preset == TARGET_PRESET for r in results):
        return []
    out = []
    if best_lossless is not None:
        name = best_lossless["name"]
        out += [_target(f"best lossless ({name}) vs naive", TARGET_LOSSLESS_VS_NAIVE,
                        best_lossless["speedup_vs_naive"]),
                _target(f"best lossless ({name}) vs best-peer", TARGET_LOSSLESS_VS_BEST_PEER,
                        best_lossless["speedup_vs_best_peer"])]
    if best_lossy is not None:
        name = best_lossy["name"]
        out += [_target(f"best lossy >= {LOSSY_MIN_PSNR_DB:.0f} dB ({name}) vs naive", TARGET_LOSSY_VS_NAIVE,
                        best_lossy["speedup_vs_naive"]),
                _target(f"best lossy >= {LOSSY_MIN_PSNR_DB:.0f} dB ({name}) vs the best lossy peer "
                        f"({best_lossy['best_lossy_peer']})", TARGET_LOSSY_VS_BEST_LOSSY_PEER,
                        best_lossy["speedup_vs_best_lossy_peer"])]
    lossy = {r.config for r in results if not r.lossless}
    for r in results:
        # a step cache's step skips blocks the FLOP count includes: its "fraction of peak" would overstate
        if (r.suite == "stage" and r.extra.get("stage") == "denoise_step" and r.extra.get("fraction_of_bf16_peak")
                and r.config not in lossy):
            out.append(_target(f"{r.config} denoising step, fraction of measured bf16 matmul peak",
                               TARGET_DENOISE_FRACTION_OF_BF16_PEAK, r.extra["fraction_of_bf16_peak"]))
    return out


def clip_psnr(frames: np.ndarray, reference: np.ndarray) -> float:
    """PSNR of a whole clip (uint8 [F, H, W, 3], mean squared error over every pixel), capped for JSON."""
    diff = frames.astype(np.float64) - reference
    return min(psnr_from_mse(float(np.mean(diff * diff))), PSNR_IDENTICAL_DB)


def compare(results: list[Result]) -> tuple[dict[str, dict], dict | None, dict | None]:
    """Per end-to-end contender what scripts read (lossless, PSNR, ratios), then the best lossless engine
    configuration and the best lossy one at >= LOSSY_MIN_PSNR_DB against the fastest lossy peer at that quality."""
    e2e = [r for r in results if r.suite == "end_to_end"]
    median = {r.config: r.median_s for r in e2e}
    good_lossy_peers = [r for r in e2e if r.role == "peer" and not r.lossless
                        and (r.psnr_vs_reference or 0) >= LOSSY_MIN_PSNR_DB]
    lossy_peer = min(good_lossy_peers, key=lambda r: r.median_s, default=None)

    def ratio(baseline: Result | str | None, r: Result) -> float | None:
        base = median.get(baseline) if isinstance(baseline, str) else baseline.median_s if baseline else None
        return base / r.median_s if base else None

    configs = {r.config: {"role": r.role, "lossless": r.lossless, "precision": r.precision, "median_s": r.median_s,
                          "psnr_vs_reference": r.psnr_vs_reference, "ssim_vs_reference": r.ssim_vs_reference,
                          "speedup_vs_naive": ratio("naive", r), "speedup_vs_best_peer": ratio("best-peer", r),
                          "speedup_vs_best_lossy_peer": None if r.lossless else ratio(lossy_peer, r),
                          "stages_s": r.stages_s} for r in e2e}

    def best(rows: list[Result]) -> dict | None:
        top = min(rows, key=lambda r: r.median_s, default=None)
        return None if top is None else {"name": top.config, **configs[top.config]}
    engines = [r for r in e2e if r.role == "engine"]
    best_lossless = best([r for r in engines if r.lossless])
    best_lossy = best([r for r in engines if not r.lossless and (r.psnr_vs_reference or 0) >= LOSSY_MIN_PSNR_DB])
    if best_lossy is not None:
        best_lossy["best_lossy_peer"] = lossy_peer.config if lossy_peer else None
    return configs, best_lossless, best_lossy


def stage_result(ctx: BenchContext, config: EngineConfig, stage: str, times: list[float]) -> Result:
    """A stage's timings with its model FLOPs, throughput and machine facts."""
    flops = model_stage_flops(ctx)[stage]
    median = statistics.median(times)
    extra = {"stage": stage, **record_extra(config.precision),
             "fraction_of_bf16_peak": flops / median / peaks()["bf16"] if flops else None}
    return Result(f"stage/{stage}/{config.name}", "stage", config.name, config.role, config.precision, ctx.preset,
                  median, p90(times), statistics.fmean(times), list(times), flops,
                  **throughput_info(flops, median, config.precision), extra=extra, lossless=config.lossless)


def end_to_end_result(ctx: BenchContext, contender: Peer | EngineConfig, times: list[float],
                      last: StepResult) -> Result:
    """A whole step's timings, its frames against the reference's; its model FLOPs are the stages' times the calls
    a step makes."""
    flops = step_flops(model_stage_flops(ctx), ctx.inputs.settings, len(last.token_ids))
    median = statistics.median(times)
    extra = {"description": contender.description, "settings": ctx.inputs.settings,
             "new_tokens": len(last.token_ids), **record_extra(contender.precision)}
    return Result(f"end_to_end/{contender.name}", "end_to_end", contender.name, contender.role,
                  contender.precision, ctx.preset, median, p90(times), statistics.fmean(times), list(times), flops,
                  **throughput_info(flops, median, contender.precision), extra=extra, lossless=contender.lossless,
                  psnr_vs_reference=clip_psnr(last.frames, ctx.reference().frames),
                  ssim_vs_reference=float(np.mean(ssim_per_frame(last.frames, ctx.reference().frames))),
                  stages_s=dict(getattr(last.timings, "stages", {})))


def summarize(preset: str, results: list[Result], timelines: dict[str, Any], wall_s: float,
              load_s: dict[str, float] | None = None) -> SuiteReport:
    vs_naive, vs_best = speedups(results, "naive"), speedups(results, "best-peer")
    configs, best_lossless, best_lossy = compare(results)
    return SuiteReport(preset, machine_info(), peaks(), results, vs_naive, vs_best,
                       targets(results, best_lossless, best_lossy), timelines, wall_s, configs, best_lossless,
                       best_lossy, dict(load_s or {}))


def run_suite(options: SuiteOptions) -> SuiteReport:
    """Stage suites for every engine configuration, then end to end for peers and engines, in one process."""
    start = time.perf_counter()
    ctx = BenchContext(options.preset, seed=options.seed, device=options.device)
    chosen = contenders(list(options.configs) if options.configs else None, options.device)
    model_stage_flops(ctx)
    ctx.reference()
    results: list[Result] = []
    for config in (c for c in chosen if c.role == "engine"):
        calls = stage_calls(ctx.engine(config), ctx.inputs)
        for stage in (name for name in options.stages if name in calls):  # `spatial` with the hybrid encoder
            log.info("stage %s / %s", stage, config.name)
            times, _ = measure(calls[stage], options.stage)
            results.append(stage_result(ctx, config, stage, times))
    log.info("end to end, round-robin: %s", ", ".join(c.name for c in chosen))
    measured = measure_interleaved({c.name: c.step_fn(ctx) for c in chosen}, options.end_to_end)
    timelines = {}
    for contender in chosen:
        times, last = measured[contender.name]
        results.append(end_to_end_result(ctx, contender, times, last))
        timelines[contender.name] = last.timings
    return summarize(options.preset, results, timelines, time.perf_counter() - start, ctx.load_s)


def format_table(report: SuiteReport) -> str:
    def ratio(table: dict[str, float], r: Result) -> str:
        return f"{table[r.config]:.2f}x" if r.suite == "end_to_end" and r.config in table else "-"
    lines = [f"preset {report.preset} on {report.machine['cpu_model']} ({report.machine['cpu_threads']} threads); "
             f"measured matmul peak fp32 {report.peaks_flops_per_s['fp32'] / 1e9:.0f} GFLOP/s, "
             f"bf16 {report.peaks_flops_per_s['bf16'] / 1e9:.0f} GFLOP/s",
             f"{'name':<40}{'prec':>6}{'median s':>11}{'p90 s':>10}{'GFLOP/s':>10}{'% peak':>8}{'vs naive':>10}"
             f"{'vs best':>9}{'lossy':>7}{'PSNR':>7}"]
    for r in report.results:
        gflops = f"{r.achieved_flops_per_s / 1e9:.1f}" if r.achieved_flops_per_s else "-"
        frac = f"{100 * r.fraction_of_peak:.0f}" if r.fraction_of_peak is not None else "-"
        psnr = f"{r.psnr_vs_reference:.1f}" if r.psnr_vs_reference is not None else "-"
        lines.append(f"{r.name:<40}{r.precision:>6}{r.median_s:>11.4f}{r.p90_s:>10.4f}{gflops:>10}{frac:>8}"
                     f"{ratio(report.speedup_vs_naive, r):>10}{ratio(report.speedup_vs_best_peer, r):>9}"
                     f"{'' if r.lossless else 'yes':>7}{psnr:>7}")
    for key in ("best_lossless", "best_lossy"):
        best = getattr(report, key)
        if best is not None:
            lines.append(f"{key}: {best['name']} ({best['speedup_vs_naive']:.2f}x naive)")
    for t in report.targets:
        lines.append(f"target {t['what']}: {t['value']:.2f} (target {t['target']}) "
                     f"{'met' if t['met'] else 'NOT met'}")
    return "\n".join(lines)
