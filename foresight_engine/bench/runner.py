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

from ..engine import Engine
from .contenders import BenchContext, EngineConfig, Peer, StepResult, contenders
from .flops import count_flops
from .machine import gpu_telemetry, machine_info, peak_rss_bytes, peaks
from .stages import STAGES, stage_calls, step_flops
from .timeline import spans_of

log = logging.getLogger(__name__)

# Speed targets, reported as ratios and never asserted; they are set for the small preset.
TARGET_PRESET = "small"
TARGET_VS_NAIVE = 5.0
TARGET_VS_BEST_PEER = 1.5
TARGET_DENOISE_FRACTION_OF_BF16_PEAK = 0.5


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


def targets(results: list[Result], vs_naive: dict[str, float], vs_best: dict[str, float]) -> list[dict]:
    """The speed targets against this run's ratios (none for presets other than TARGET_PRESET)."""
    results = [r for r in results if r.preset == TARGET_PRESET]
    engines = [r.config for r in results if r.suite == "end_to_end" and r.role == "engine"]
    out = []
    for name in engines:
        if name in vs_naive:
            out.append({"what": f"{name} end to end vs naive", "target": TARGET_VS_NAIVE, "value": vs_naive[name],
                        "met": vs_naive[name] >= TARGET_VS_NAIVE})
        if name in vs_best:
            out.append({"what": f"{name} end to end vs best-peer", "target": TARGET_VS_BEST_PEER,
                        "value": vs_best[name], "met": vs_best[name] >= TARGET_VS_BEST_PEER})
    for r in results:
        if r.suite == "stage" and r.extra.get("stage") == "denoise_step" and r.extra.get("fraction_of_bf16_peak"):
            value = r.extra["fraction_of_bf16_peak"]
            out.append({"what": f"{r.config} denoising step, fraction of measured bf16 matmul peak",
                        "target": TARGET_DENOISE_FRACTION_OF_BF16_PEAK, "value": value,
                        "met": value >= TARGET_DENOISE_FRACTION_OF_BF16_PEAK})
    return out


def stage_result(ctx: BenchContext, config: EngineConfig, stage: str, times: list[float]) -> Result:
    """A stage's timings with its model FLOPs, throughput and machine facts."""
    flops = model_stage_flops(ctx)[stage]
    median = statistics.median(times)
    extra = {"stage": stage, **record_extra(config.precision),
             "fraction_of_bf16_peak": flops / median / peaks()["bf16"] if flops else None}
    return Result(f"stage/{stage}/{config.name}", "stage", config.name, config.role, config.precision, ctx.preset,
                  median, p90(times), statistics.fmean(times), list(times), flops,
                  **throughput_info(flops, median, config.precision), extra=extra)


def end_to_end_result(ctx: BenchContext, contender: Peer | EngineConfig, times: list[float],
                      last: StepResult) -> Result:
    """A whole step's timings; its model FLOPs are the stages' times the calls a step makes."""
    flops = step_flops(model_stage_flops(ctx), ctx.inputs.settings, len(last.token_ids))
    median = statistics.median(times)
    extra = {"description": contender.description, "settings": ctx.inputs.settings,
             "new_tokens": len(last.token_ids), **record_extra(contender.precision)}
    return Result(f"end_to_end/{contender.name}", "end_to_end", contender.name, contender.role,
                  contender.precision, ctx.preset, median, p90(times), statistics.fmean(times), list(times), flops,
                  **throughput_info(flops, median, contender.precision), extra=extra)


def summarize(preset: str, results: list[Result], timelines: dict[str, Any], wall_s: float) -> SuiteReport:
    vs_naive, vs_best = speedups(results, "naive"), speedups(results, "best-peer")
    return SuiteReport(preset, machine_info(), peaks(), results, vs_naive, vs_best,
                       targets(results, vs_naive, vs_best), timelines, wall_s)


def run_suite(options: SuiteOptions) -> SuiteReport:
    """Stage suites for every engine configuration, then end to end for peers and engines, in one process."""
    start = time.perf_counter()
    ctx = BenchContext(options.preset, seed=options.seed, device=options.device)
    chosen = contenders(list(options.configs) if options.configs else None)
    model_stage_flops(ctx)
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
    return summarize(options.preset, results, timelines, time.perf_counter() - start)


def format_table(report: SuiteReport) -> str:
    def ratio(table: dict[str, float], r: Result) -> str:
        return f"{table[r.config]:.2f}x" if r.suite == "end_to_end" and r.config in table else "-"
    lines = [f"preset {report.preset} on {report.machine['cpu_model']} ({report.machine['cpu_threads']} threads); "
             f"measured matmul peak fp32 {report.peaks_flops_per_s['fp32'] / 1e9:.0f} GFLOP/s, "
             f"bf16 {report.peaks_flops_per_s['bf16'] / 1e9:.0f} GFLOP/s",
             f"{'name':<34}{'prec':>6}{'median s':>11}{'p90 s':>10}{'GFLOP/s':>10}{'% peak':>8}{'vs naive':>10}"
             f"{'vs best':>9}"]
    for r in report.results:
        gflops = f"{r.achieved_flops_per_s / 1e9:.1f}" if r.achieved_flops_per_s else "-"
        frac = f"{100 * r.fraction_of_peak:.0f}" if r.fraction_of_peak is not None else "-"
        lines.append(f"{r.name:<34}{r.precision:>6}{r.median_s:>11.4f}{r.p90_s:>10.4f}{gflops:>10}{frac:>8}"
                     f"{ratio(report.speedup_vs_naive, r):>10}{ratio(report.speedup_vs_best_peer, r):>9}")
    for t in report.targets:
        lines.append(f"target {t['what']}: {t['value']:.2f} (target {t['target']}) "
                     f"{'met' if t['met'] else 'NOT met'}")
    return "\n".join(lines)
