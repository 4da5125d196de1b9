"""The bench's tables as markdown, for the README: written by `foresight-engine bench --markdown FILE`, or spliced
into a file between `<!-- bench:begin -->` and `<!-- bench:end -->` by `--readme FILE` (never edited by hand)."""
from __future__ import annotations

from pathlib import Path

from ..errors import ForesightError
from ..video_io import atomic_output
from .runner import LOSSY_MIN_PSNR_DB, SuiteReport

BEGIN, END = "<!-- bench:begin -->", "<!-- bench:end -->"


def _x(value: float | None) -> str:
    return "-" if value is None else f"{value:.2f}x"


def _stages(stages: dict[str, float]) -> str:
    return ", ".join(f"{name} {seconds:.2f}" for name, seconds in stages.items())


def _table(report: SuiteReport, lossless: bool) -> list[str]:
    vs = "vs best-peer" if lossless else "vs best lossy peer"
    lines = [f"| configuration | role | prec | median s | vs naive | {vs} | PSNR dB | SSIM | stages (s, last step) |",
             "|---|---|---|---:|---:|---:|---:|---:|---|"]
    for name, c in report.configs.items():
        if c["lossless"] != lossless:
            continue
        ratio = c["speedup_vs_best_peer"] if lossless else c["speedup_vs_best_lossy_peer"]
        ssim = "-" if c["ssim_vs_reference"] is None else f"{c['ssim_vs_reference']:.4f}"
        psnr = "-" if c["psnr_vs_reference"] is None else f"{c['psnr_vs_reference']:.1f}"
        lines.append(f"| {name} | {c['role']} | {c['precision']} | {c['median_s']:.3f} | "
                     f"{_x(c['speedup_vs_naive'])} | {_x(ratio)} | {psnr} | {ssim} | {_stages(c['stages_s'])} |")
    return lines


def format_markdown(report: SuiteReport, command: str) -> str:
    m, peaks = report.machine, report.peaks_flops_per_s
    lines = [f"`{command}` (suite wall time {report.wall_s:.0f} s); CPU: {m['cpu_model']}, {m['cpu_threads']} "
             f"threads, flags {' '.join(m.get('cpu_flags', []))}; measured matmul peak fp32 "
             f"{peaks['fp32'] / 1e9:.0f} GFLOP/s, bf16 {peaks['bf16'] / 1e9:.0f} GFLOP/s. PSNR/SSIM: frames against "
             "the fp32 eager reference engine (100 dB: pixel-identical). Ratios of medians timed round-robin in one "
             "process.", "", "**Lossless** (no skipped work):", "", *_table(report, True), "",
             f"**Lossy** (step caches; a lossy peer counts only at >= {LOSSY_MIN_PSNR_DB:.0f} dB):", "",
             *_table(report, False), ""]
    for key, label in (("best_lossless", "best lossless"), ("best_lossy", f"best lossy at >= {LOSSY_MIN_PSNR_DB:.0f} dB")):
        best = getattr(report, key)
        if best is None:
            lines.append(f"- {label}: none")
            continue
        against = (f"{_x(best['speedup_vs_best_peer'])} best-peer" if key == "best_lossless" else
                   f"{_x(best['speedup_vs_best_lossy_peer'])} the best lossy peer ({best['best_lossy_peer']})")
        lines.append(f"- {label}: `{best['name']}`, {_x(best['speedup_vs_naive'])} naive, {against}")
    for t in report.targets:
        value = "-" if t["value"] is None else f"{t['value']:.2f}"
        lines.append(f"- target {t['what']}: {value} (target {t['target']}) {'met' if t['met'] else 'NOT met'}")
    if report.load_s:
        lines.append("- Engine.load of the built artifacts (s, nothing compiled at load): "
                     + ", ".join(f"{name} {s:.2f}" for name, s in report.load_s.items()))
    return "\n".join(lines) + "\n"


def splice(path: Path, markdown: str) -> None:
    """Replace what lies between the markers in `path` with `markdown` (atomically)."""
    text = path.read_text()
    if text.count(BEGIN) != 1 or text.count(END) != 1 or text.index(BEGIN) > text.index(END):
        raise ForesightError(f"{path} needs exactly one {BEGIN} ... {END} block for the bench's tables")
    head, rest = text.split(BEGIN)
    _, tail = rest.split(END)
    with atomic_output(path) as tmp:
        tmp.write_text(f"{head}{BEGIN}\n{markdown}{END}{tail}")


__all__ = ["BEGIN", "END", "format_markdown", "splice"]
