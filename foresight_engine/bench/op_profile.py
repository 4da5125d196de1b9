"""Where one reasoning step spends its time, by operator family (`torch.profiler`, CPU).

`python -m foresight_engine.bench.op_profile --preset small --config compile-bf16` profiles one `predict()` of a
bench configuration (after warm-up rounds, text and video one after the other so every op runs on the profiled
thread) and prints the share of self CPU time per family, plus the kernels inductor generated (their names list
the aten ops each one fused). This table is what picks the custom kernels in `foresight_engine/kernels/`.

Families come from op names: aten ops by name, inductor's `cpp_fused_<ops>_<n>` kernels by the ops they fused
(a fused kernel that holds a norm is "norms/modulation" even if it also adds the shift, one that rotates pairs is
"RoPE"). Elementwise aten ops run outside a norm or RoPE in eager code (a `mul` is a `mul`), so eager stages
count their norm and RoPE arithmetic partly as "elementwise": the split is exact for compiled stages only.
"""
from __future__ import annotations

import argparse
import json
import re
from dataclasses import asdict, dataclass, field

import torch

from .op_families import FAMILIES, kernel_name, op_family

_COMPILED = re.compile(r"^(cpp_fused_|triton_)")
# profiler rows that only group other rows (their self time is Python/dispatch overhead, kept in "other")
_SKIP = re.compile(r"^(profilerstep|## |torch-compiled region|compiledfxgraph|\[pgo\])")


@dataclass
class FamilyShare:
    family: str
    seconds: float
    share: float  # of the profiled step's total self time
    top_ops: list[tuple[str, float]]  # (op, seconds), largest first


@dataclass
class OpProfile:
    config: str
    preset: str
    total_s: float  # sum of self CPU time over every op (one thread at a time: the wall time of the step)
    families: list[FamilyShare]
    fused_kernels: list[tuple[str, float, str]] = field(default_factory=list)  # (inductor kernel, seconds, family)

    def to_dict(self) -> dict:
        return asdict(self)


def summarize(rows: list[tuple[str, float]], config: str = "", preset: str = "") -> OpProfile:
    """Group (op name, self seconds) rows into families."""
    by_family: dict[str, dict[str, float]] = {f: {} for f in FAMILIES}
    fused: list[tuple[str, float, str]] = []
    for name, seconds in rows:
        if _SKIP.search(name.lower()):
            family = "other"
        else:
            family = op_family(name)
        by_family[family][name] = by_family[family].get(name, 0.0) + seconds
        if _COMPILED.search(kernel_name(name)):
            fused.append((kernel_name(name), seconds, family))
    total = sum(s for _, s in rows) or 1.0
    families = [FamilyShare(f, sum(ops.values()), sum(ops.values()) / total,
                            sorted(ops.items(), key=lambda kv: -kv[1])[:4]) for f, ops in by_family.items()]
    return OpProfile(config, preset, total, families, sorted(fused, key=lambda r: -r[1]))


def profile_step(step, rounds: int = 1) -> list[tuple[str, float]]:
    """(op, self CPU seconds per round) of `rounds` calls of `step` under torch.profiler."""
    from torch.profiler import ProfilerActivity, profile
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        for _ in range(rounds):
            step()
    return [(e.key, e.self_cpu_time_total / 1e6 / rounds) for e in prof.key_averages() if e.self_cpu_time_total > 0]


def format_profile(p: OpProfile, kernels: int = 12) -> str:
    lines = [f"op families, preset {p.preset}, {p.config}: {p.total_s:.3f} s of self CPU time in one step",
             f"{'family':<18}{'s':>8}{'share':>8}  top ops"]
    for f in sorted(p.families, key=lambda f: -f.seconds):
        top = ", ".join(f"{n} {s * 1e3:.0f}ms" for n, s in f.top_ops[:3])
        lines.append(f"{f.family:<18}{f.seconds:>8.3f}{f.share * 100:>7.1f}%  {top}")
    if p.fused_kernels:
        lines.append(f"largest inductor kernels ({len(p.fused_kernels)} in all):")
        lines += [f"  {s * 1e3:7.1f} ms  {fam:<17} {n}" for n, s, fam in p.fused_kernels[:kernels]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="small")
    parser.add_argument("--config", default="compile-bf16", help="a bench configuration (foresight-engine bench)")
    parser.add_argument("--warmup", type=int, default=2, help="calls before profiling (compiles happen here)")
    parser.add_argument("--rounds", type=int, default=1, help="profiled calls (the table is per call)")
    parser.add_argument("--json", help="write the profile as JSON here")
    args = parser.parse_args(argv)
    # inductor names its CPU kernels in the profile only when asked to (set before anything compiles)
    torch._inductor.config.cpp.enable_kernel_profile = True
    from .contenders import BenchContext, contenders
    ctx = BenchContext(args.preset)
    (contender,) = contenders([args.config])
    if hasattr(contender, "build") and contender.role == "engine":
        engine = ctx.engine(contender)
        engine.overlap = False  # one thread: the profile is the step's critical path, op by op
    step = contender.step_fn(ctx)
    for _ in range(args.warmup):
        step()
    result = summarize(profile_step(step, args.rounds), args.config, args.preset)
    print(format_profile(result))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result.to_dict(), f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
