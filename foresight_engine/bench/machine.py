"""What the numbers were measured on: versions, CPU, peak RSS, this machine's measured matmul peak, GPU telemetry."""
from __future__ import annotations

import functools
import platform
import resource
import time
from importlib import metadata

import torch

from ..errors import ForesightError

PEAK_MATMUL_SIZE = 2048  # the peak is the best of a few 2048^3 matmuls


class BenchError(ForesightError):
    """A benchmark cannot run as asked (a missing optional dependency, an unknown configuration)."""


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for dist in ("torch", "transformers", "diffusers", "foresight-engine", "numpy", "pytest-benchmark"):
        try:
            out[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[dist] = "not installed"
    return out


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# the CPU features that decide which low-precision GEMMs are fast (oneDNN picks its kernels from them)
PRECISION_FLAGS = ("avx2", "avx512f", "avx512_bf16", "avx512_vnni", "avx_vnni", "amx_bf16", "amx_int8", "amx_tile")


def cpu_flags() -> list[str]:
    """Which of `PRECISION_FLAGS` this CPU has (lscpu's flags)."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line.split(":", 1)[1].split() for line in f if line.startswith("flags")), [])
    except OSError:
        flags = []
    return [flag for flag in PRECISION_FLAGS if flag in flags]


def peak_rss_bytes() -> int:
    """Peak resident set size of this process so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def device() -> torch.device:
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


@functools.cache
def matmul_peak(dtype: torch.dtype) -> float:
    """Measured FLOP/s of a square matmul at `dtype` on this machine (once per process, then cached)."""
    n = PEAK_MATMUL_SIZE
    dev = device()
    a = torch.randn(n, n, device=dev).to(dtype)
    b = torch.randn(n, n, device=dev).to(dtype)
    best = float("inf")
    for _ in range(4):  # the first is a warm-up that rarely wins
        if dev.type == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        torch.mm(a, b)
        if dev.type == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * n ** 3 / best


def gpu_telemetry() -> dict:
    """GPU memory, clocks, power and throttle reasons through NVML; {} on a machine without a CUDA GPU.

    The one capability check for GPU telemetry: with a GPU present but nvidia-ml-py missing it raises, naming it."""
    if not torch.cuda.is_available():
        return {}
    try:
        import pynvml
    except ImportError:
        raise BenchError("a CUDA GPU is present but nvidia-ml-py is missing: pip install 'foresight-engine[gpu]'")
    pynvml.nvmlInit()
    try:
        h = pynvml.nvmlDeviceGetHandleByIndex(torch.cuda.current_device())
        mem = pynvml.nvmlDeviceGetMemoryInfo(h)
        return {"gpu_name": pynvml.nvmlDeviceGetName(h), "gpu_memory_used_bytes": int(mem.used),
                "gpu_max_memory_allocated_bytes": int(torch.cuda.max_memory_allocated()),
                "gpu_sm_clock_mhz": pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM),
                "gpu_mem_clock_mhz": pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_MEM),
                "gpu_power_w": pynvml.nvmlDeviceGetPowerUsage(h) / 1000,
                "gpu_throttle_reasons": int(pynvml.nvmlDeviceGetCurrentClocksThrottleReasons(h))}
    finally:
        pynvml.nvmlShutdown()


def machine_info() -> dict:
    """Static facts recorded with every result."""
    return {"versions": versions(), "cpu_model": cpu_model(), "cpu_flags": cpu_flags(),
            "cpu_threads": torch.get_num_threads(),
            "device": str(device()), "gpu_model": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def peaks() -> dict[str, float]:
    """Measured matmul peaks (FLOP/s) by precision name."""
    return {"fp32": matmul_peak(torch.float32), "bf16": matmul_peak(torch.bfloat16)}
