"""`make gpu-check` (`python -m foresight_engine.bench.gpu_check`): the GPU acceptance suite, one command for
whoever has a GPU, after `make test`.

1. Without a CUDA GPU it stops at once with one line (exit status 2).
2. `pytest -m gpu` (tests/test_gpu_acceptance.py, test_device_gpu.py, test_kernels_gpu.py): tiny and small built with
   `tensorrt` (fp16, bf16, fp8) and `torch-tensorrt` (bf16) on the GPU, loaded with device="cuda", tokens and frames
   against eager on the GPU under the accuracy gate, the denoising loop captured and replayed as one CUDA graph,
   text overlapped with video on two streams. Each test appends a record (JSON lines).
3. `foresight-engine bench --device cuda` on the small preset: the GPU peers (diffusers glued to transformers in
   fp32; the same in bf16 with `torch.compile(mode="max-autotune")`) against the engine's configurations, the
   TensorRT and Torch-TensorRT artifacts among them.
4. OUT/report.json and OUT/report.md: every test's outcome, the build and accuracy numbers, the bench's ratios.
Nothing here claims a number: the report holds what this machine measured.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

import torch

NO_GPU = "gpu-check: no CUDA GPU here (torch.cuda.is_available() is False): nothing to check; run it on a GPU machine"
TESTS = ("tests",)  # every `gpu` test: the acceptance suite, the device and kernel GPU tests


class _Outcomes:
    """A pytest plugin collecting each test's outcome."""

    def __init__(self) -> None:
        self.outcomes: dict[str, str] = {}

    def pytest_runtest_logreport(self, report) -> None:
        if report.when == "call" or report.outcome != "passed":
            self.outcomes[report.nodeid] = report.outcome


def run_tests(out: Path, extra: list[str]) -> tuple[int, dict[str, str], list[dict]]:
    import pytest
    records = out / "records.jsonl"
    records.unlink(missing_ok=True)
    os.environ["FORESIGHT_GPU_REPORT"] = str(records)
    plugin = _Outcomes()
    code = pytest.main(["-m", "gpu", "-q", "-p", "no:cacheprovider", *TESTS, *extra], plugins=[plugin])
    lines = records.read_text().splitlines() if records.is_file() else []
    return int(code), plugin.outcomes, [json.loads(line) for line in lines]


def run_bench(preset: str, quick: bool) -> dict:
    from .runner import SuiteOptions, format_table, run_suite
    report = run_suite(SuiteOptions(preset, quick=quick, device="cuda"))
    print(format_table(report))
    return report.to_dict()


def summarize(outcomes: dict[str, str], records: list[dict], bench: dict | None, machine: dict) -> dict:
    passed = sum(1 for o in outcomes.values() if o == "passed")
    return {"machine": machine, "tests": {"passed": passed, "total": len(outcomes), "outcomes": outcomes},
            "records": records,
            "bench": None if bench is None else {k: bench[k] for k in ("preset", "speedup_vs_naive",
                                                                       "speedup_vs_best_peer", "targets")}}


def format_report(summary: dict) -> str:
    """The markdown report of a summary (`summarize`)."""
    tests, machine = summary["tests"], summary["machine"]
    lines = ["# foresight-engine GPU acceptance (`make gpu-check`)", "",
             f"Measured on {machine.get('gpu', '?')} (torch {machine.get('torch', '?')}, CUDA "
             f"{machine.get('cuda', '?')}), {machine.get('date', '?')}.", "",
             f"## Tests: {tests['passed']} / {tests['total']} passed", "", "| test | outcome |", "|---|---|"]
    lines += [f"| `{name}` | {outcome} |" for name, outcome in sorted(tests["outcomes"].items())]
    builds = [r for r in summary["records"] if r.get("test") == "load_and_predict"]
    if builds:
        lines += ["", "## Built artifacts against eager on the GPU", "",
                  "| preset | backend | precision | frame PSNR (dB) | token agreement | passed |", "|---|---|---|---|---|---|"]
        lines += [f"| {r['preset']} | {r['backend']} | {r['precision']} | {r['frame_psnr']:.1f} | "
                  f"{r['token_agreement']:.3f} | {'yes' if r['passed'] else 'NO'} |" for r in builds]
    other = [r for r in summary["records"] if r.get("test") not in ("load_and_predict", "build")]
    if other:
        lines += ["", "## Graphs, streams, buffers", ""]
        lines += [f"- {r['test']} ({r.get('preset')} {r.get('backend', '')} {r.get('precision', '')}): "
                  f"{'passed' if r.get('passed') else 'FAILED'} " + json.dumps({k: v for k, v in r.items() if k not in
                  ('test', 'preset', 'backend', 'precision', 'passed', 'timings')}) for r in other]
    bench = summary.get("bench")
    if bench:
        lines += ["", f"## Bench ratios ({bench['preset']} preset, medians measured in one process)", "",
                  "| configuration | x naive | x best peer |", "|---|---|---|"]
        lines += [f"| {name} | {ratio:.2f} | {bench['speedup_vs_best_peer'].get(name, float('nan')):.2f} |"
                  for name, ratio in bench["speedup_vs_naive"].items()]
    return "\n".join(lines) + "\n"


def _machine() -> dict[str, Any]:
    return {"gpu": torch.cuda.get_device_name(0), "sm": ".".join(map(str, torch.cuda.get_device_capability(0))),
            "torch": torch.__version__, "cuda": torch.version.cuda, "date": time.strftime("%Y-%m-%d %H:%M")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="gpu-check", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("out/gpu-check"))
    parser.add_argument("--bench-preset", default="small")
    parser.add_argument("--no-bench", action="store_true", help="the tests only")
    parser.add_argument("--full-bench", action="store_true", help="the bench's full rounds (default: --quick)")
    args, extra = parser.parse_known_args(argv)
    if not torch.cuda.is_available():
        print(NO_GPU, file=sys.stderr)
        return 2
    args.out.mkdir(parents=True, exist_ok=True)
    code, outcomes, records = run_tests(args.out, extra)
    bench = None if args.no_bench else run_bench(args.bench_preset, quick=not args.full_bench)
    summary = summarize(outcomes, records, bench, _machine())
    (args.out / "report.json").write_text(json.dumps(summary, indent=2, default=str))
    (args.out / "report.md").write_text(format_report(summary))
    print(f"gpu-check: {summary['tests']['passed']}/{summary['tests']['total']} tests passed; report: "
          f"{args.out / 'report.md'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
