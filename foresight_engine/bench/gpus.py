"""Public datasheet figures of the GPUs `foresight-engine plan` projects onto (dense tensor-core peaks, no sparsity).

Sources:
- H100 SXM5: NVIDIA H100 datasheet — 989 TFLOP/s BF16/FP16, 1979 FP8, 3.35 TB/s HBM3, 80 GB.
- H100 PCIe: NVIDIA H100 datasheet — 756 TFLOP/s BF16/FP16 and 1513 FP8 dense (the 1513/3026 figures halved:
  sparsity), 2.0 TB/s HBM2e, 80 GB.
- H200 SXM: NVIDIA H200 datasheet — same compute as H100 SXM, 4.8 TB/s HBM3e, 141 GB.
- "fp32" is TF32 on the tensor cores (dense): H100 SXM/H200 495, H100 PCIe 378, A100 156, L40S 183, RTX 4090 82.6
  TFLOP/s (the same datasheets); a policy that keeps a component in fp32 (the VAE under fp16) runs it there.
- A100 SXM 80 GB: NVIDIA A100 datasheet — 312 TFLOP/s BF16/FP16, 2.039 TB/s HBM2e, 80 GB; no FP8 tensor cores.
- L40S: NVIDIA L40S datasheet — 362 TFLOP/s BF16/FP16, 733 FP8 (the 733/1466 figures halved: sparsity), 864 GB/s
  GDDR6, 48 GB.
- RTX 4090: NVIDIA Ada Lovelace architecture whitepaper, appendix — 165.2 TFLOP/s FP16/BF16 and 330.3 FP8 with FP32
  accumulate (dense), 1008 GB/s GDDR6X, 24 GB.
"""
from __future__ import annotations

from dataclasses import dataclass

from ..errors import ForesightError


class UnsupportedPrecisionError(ForesightError, ValueError):
    """The GPU has no tensor cores for the requested precision."""


@dataclass(frozen=True)
class GPUSpec:
    name: str
    label: str
    peak_tflops: dict[str, float]  # precision -> dense TFLOP/s; a missing precision is unsupported
    bandwidth_tb_s: float
    memory_gb: float

    def peak_flops(self, precision: str) -> float:
        if precision not in self.peak_tflops:
            raise UnsupportedPrecisionError(
                f"{self.label} has no {precision} tensor cores; use --precision one of {sorted(self.peak_tflops)}")
        return self.peak_tflops[precision] * 1e12

    @property
    def bandwidth(self) -> float:
        """Bytes per second."""
        return self.bandwidth_tb_s * 1e12


GPUS: dict[str, GPUSpec] = {g.name: g for g in (
    GPUSpec("h100", "NVIDIA H100 SXM", {"bf16": 989.0, "fp16": 989.0, "fp8": 1979.0, "fp32": 494.7}, 3.35, 80),
    GPUSpec("h100-pcie", "NVIDIA H100 PCIe", {"bf16": 756.0, "fp16": 756.0, "fp8": 1513.0, "fp32": 378.0}, 2.0, 80),
    GPUSpec("h200", "NVIDIA H200 SXM", {"bf16": 989.0, "fp16": 989.0, "fp8": 1979.0, "fp32": 494.7}, 4.8, 141),
    GPUSpec("a100", "NVIDIA A100 SXM 80GB", {"bf16": 312.0, "fp16": 312.0, "fp32": 156.0}, 2.039, 80),
    GPUSpec("l40s", "NVIDIA L40S", {"bf16": 362.0, "fp16": 362.0, "fp8": 733.0, "fp32": 183.0}, 0.864, 48),
    GPUSpec("rtx4090", "NVIDIA GeForce RTX 4090", {"bf16": 165.2, "fp16": 165.2, "fp8": 330.3, "fp32": 82.6}, 1.008,
            24),
)}


def gpu(name: str) -> GPUSpec:
    try:
        return GPUS[name.lower()]
    except KeyError:
        raise ForesightError(f"unknown GPU {name!r}; choose one of {sorted(GPUS)}") from None
