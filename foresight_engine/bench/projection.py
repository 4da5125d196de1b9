"""The GPU projection of one step (what `foresight-engine plan` prints): a bound and a realistic figure, no
measurement.

Per stage call, from the counts of `flops.py` on the meta device:
- GEMM FLOPs (Linears, convolutions) run at the dense tensor-core rate of the stage's precision; ATTENTION FLOPs
  (the batched matmuls of attention: SDPA runs its math decomposition on the meta device, and no other batched
  matmul occurs in these models) run at the 16-bit rate even under FP8, because an FP8 build quantizes the Linears
  (the FP8 attention option is not assumed);
- each component runs at the precision its policy gives it (`PrecisionPolicy.for_precision`: under fp8 the vision
  tower, adapter and VAE stay bf16);
- compute time = GEMM FLOPs / (rate x GEMM efficiency) + attention FLOPs / (16-bit rate x attention efficiency);
  memory time = bytes / (bandwidth x bandwidth efficiency).
A stage alone takes max(compute, memory). The step: vision and prefill, then the text branch (decode) beside the
video branch (adapter -> denoise -> VAE) on the SAME GPU. Two branches on one GPU share its tensor cores and its
memory bandwidth, so the overlapped part takes at least max(sum of every compute time, sum of every memory time),
and at least each branch's own sequential time; the old max(text, video) ignored the sharing.
`IDEAL` (every efficiency 1) gives the lower bound; `REALISTIC` the figure with the fractions below.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ..precision import PrecisionPolicy
from .gpus import GPUSpec

# plan's components -> the precision policy's
POLICY_COMPONENT = {"vision": "vision_tower", "spatial": "spatial_encoder", "language": "backbone",
                    "adapter": "adapter", "transformer": "video_decoder", "vae": "vae"}
# DINOv2 (hybrid encoder) runs beside vision + prefill, but all three are compute-bound on one GPU: it adds up
FRONT, TEXT, VIDEO = ("vision", "spatial", "prefill"), ("text",), ("adapter", "denoise", "vae")


@dataclass(frozen=True)
class Efficiency:
    """Fractions of the datasheet peaks real kernels sustain, and where each figure comes from."""

    gemm: float
    attention: float
    bandwidth: float
    sources: dict = field(default_factory=dict)


IDEAL = Efficiency(1.0, 1.0, 1.0, {"all": "datasheet peaks: a lower bound no kernel reaches"})
REALISTIC = Efficiency(
    gemm=0.70, attention=0.50, bandwidth=0.85,
    sources={
        "gemm": "assumed 70% of dense peak for the large Linears of these models in cuBLAS/TensorRT kernels (the "
                "FlashAttention-3 paper's 75% at its best sizes is the upper end of what Hopper kernels reach)",
        "attention": "FlashAttention-3 (Shah et al., arXiv 2407.08608): up to 740 TFLOP/s FP16 on an H100 SXM = "
                     "75% of peak at head dim 128 and long sequences; LTX-Video's head dim 64 and the short text "
                     "keys of cross-attention run well below that: 50% assumed",
        "bandwidth": "assumed 85%: streaming kernels sustain roughly 85-90% of datasheet HBM bandwidth on Hopper; "
                     "decode kernels reading weights once per token come close to it",
    })


def policy_precision(component: str, precision: str) -> str:
    """The precision `precision`'s default policy gives a plan component (fp16's VAE: see `precision.py`)."""
    return PrecisionPolicy.for_precision(precision).of(POLICY_COMPONENT[component]).value


@dataclass
class StageTime:
    name: str
    precision: str
    gemm_flops: float  # all calls
    attention_flops: float
    bytes: float
    compute_s: float
    memory_s: float

    @property
    def seconds(self) -> float:
        return max(self.compute_s, self.memory_s)


def _compute_rate(spec: GPUSpec, precision: str, efficiency: float) -> float:
    return spec.peak_flops(precision) * efficiency  # fp32: TF32 tensor cores (gpus.py)


def stage_time(name: str, component: str, calls: int, gemm_flops: float, attention_flops: float, nbytes: float,
               spec: GPUSpec, precision: str, efficiency: Efficiency) -> StageTime:
    """One stage (all its calls) at the policy's precision for `component`; FLOPs and bytes are per call."""
    p = policy_precision(component, precision)
    sixteen = "fp16" if p == "fp16" else "bf16"  # attention stays 16-bit under fp8
    compute = gemm_flops / _compute_rate(spec, p, efficiency.gemm)
    compute += attention_flops / _compute_rate(spec, sixteen, efficiency.attention)
    memory = nbytes / (spec.bandwidth * efficiency.bandwidth)
    return StageTime(name, p, gemm_flops * calls, attention_flops * calls, nbytes * calls, compute * calls,
                     memory * calls)


def step_seconds(times: dict[str, StageTime]) -> dict[str, float]:
    """Sequential step, and the step with the text branch overlapped with the video branch on one GPU."""
    front = sum(times[s].seconds for s in FRONT if s in times)
    shared = [times[s] for s in TEXT + VIDEO]
    overlapped = max(sum(t.compute_s for t in shared), sum(t.memory_s for t in shared),
                     sum(times[s].seconds for s in TEXT), sum(times[s].seconds for s in VIDEO))
    return {"sequential_s": sum(t.seconds for t in times.values()), "overlapped_s": front + overlapped,
            "overlap_compute_s": sum(t.compute_s for t in shared), "overlap_memory_s": sum(t.memory_s for t in shared),
            "text_branch_s": sum(times[s].seconds for s in TEXT), "video_branch_s": sum(times[s].seconds for s in VIDEO)}


def project_step(stages: list, spec: GPUSpec, precision: str, efficiency: Efficiency, components: dict[str, str],
                 byte_sizes) -> dict:
    """`stages`: plan.StageCount list; `components`: stage -> plan component; `byte_sizes(precision) -> (weight,
    activation)` bytes per element. Returns the stage times and the step figures at `efficiency`."""
    times = {}
    for s in stages:
        by_op = s.per_call.by_op
        attention = float(sum(v for k, v in by_op.items() if "bmm" in k or "attention" in k))
        gemm = float(s.per_call.flops) - attention
        p = policy_precision(components[s.name], precision)
        nbytes = s.per_call.bytes(*byte_sizes(p))
        times[s.name] = stage_time(s.name, components[s.name], s.calls, gemm, attention, nbytes, spec, precision,
                                   efficiency)
    return {"stages": {n: asdict(t) | {"seconds": t.seconds} for n, t in times.items()}, **step_seconds(times),
            "efficiency": asdict(efficiency)}


__all__ = ["Efficiency", "IDEAL", "REALISTIC", "StageTime", "policy_precision", "project_step", "stage_time",
           "step_seconds"]
