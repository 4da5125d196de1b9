"""The native kernel libraries (built by CMakeLists.txt, `make kernels`), loaded with ctypes.

`cpu_library()` is the C ABI of `csrc/fk_api.h` or None; when it cannot be loaded, the custom ops run their
PyTorch reference and ONE warning says why and how to build it. `cuda_library()` is the compiled CUDA kernels
(`csrc/cuda/`), used on a GPU where Triton is absent. Environment:
- `FORESIGHT_KERNELS_LIB=/path/libforesight_kernels.so`: load the CPU library from elsewhere (a path that does
  not exist runs every op's reference, after the warning);
- `FORESIGHT_KERNELS_ISA=scalar|avx512|avx512_bf16`: cap the instruction set the CPU kernels use (default: the
  best this CPU has, found by cpuid at load time); `use_isa(name)` does the same for a block of code.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from ..errors import KernelError

log = logging.getLogger(__name__)

LIB_DIR = Path(__file__).parent / "_native"
CPU_LIB = "libforesight_kernels.so"
CUDA_LIB = "libforesight_kernels_cuda.so"
ISAS = ("scalar", "avx512", "avx512_bf16")  # fk_api.h's FK_SCALAR, FK_AVX512, FK_AVX512_BF16
ABI_VERSION = 1
BUILD_HINT = "build it with `make kernels` (cmake + a C++ compiler)"

# torch dtype -> fk_api.h element type
DTYPE_CODES = {torch.float32: 0, torch.bfloat16: 1, torch.int8: 2, torch.float8_e4m3fn: 3}
_STATUS = {1: "unsupported dtype", 2: "bad shape", 3: "out of memory", 4: "CUDA error"}

_i64, _ptr, _int, _float = ctypes.c_int64, ctypes.c_void_p, ctypes.c_int, ctypes.c_float
_SIGNATURES = {
    "fk_version": [], "fk_cpu_isa": [], "fk_isa": [], "fk_set_isa": [_int], "fk_cpu_has_vnni": [],
    "fk_rmsnorm_modulate": [_int, _ptr, _ptr, _ptr, _i64, _i64, _i64, _i64, _i64, _i64, _i64, _float, _int, _float,
                            _ptr, _int],
    "fk_rmsnorm_rope": [_int, _ptr, _ptr, _ptr, _ptr, _ptr, _ptr, _i64, _i64, _i64, _i64, _float, _ptr, _ptr, _int],
    "fk_varlen_attention": [_int, _ptr, _ptr, _ptr, _ptr, _ptr, _i64, _i64, _i64, _i64, _i64, _i64, _i64, _i64, _i64,
                            _float, _int],
}
_CUDA_SIGNATURES = {
    "fk_cuda_version": [],
    "fk_cuda_rmsnorm_modulate": [_int, _ptr, _ptr, _ptr, _i64, _i64, _i64, _i64, _i64, _i64, _i64, _float, _int, _ptr,
                                 _ptr, _ptr],
    "fk_cuda_rmsnorm_rope": [_int, _ptr, _ptr, _ptr, _ptr, _ptr, _ptr, _i64, _i64, _i64, _i64, _float, _ptr, _ptr,
                             _ptr],
}


@dataclass(frozen=True)
class NativeStatus:
    """What `foresight_engine.kernels.native_status()` reports."""

    cpu_library: str | None  # path of the loaded CPU library, None when the reference runs instead
    error: str | None  # why it is not loaded
    cpu_isa: str | None  # best instruction set of this CPU (cpuid)
    isa: str | None  # the one in use
    vnni: bool  # AVX512-VNNI present (reported; no op here has an int8 dot product)
    cuda_library: str | None  # path of the built CUDA library, if any (it loads only where CUDA runs)


def _declare(lib: ctypes.CDLL, signatures: dict) -> ctypes.CDLL:
    for name, args in signatures.items():
        fn = getattr(lib, name)
        fn.argtypes, fn.restype = args, ctypes.c_int
    return lib


def _load_error() -> tuple[ctypes.CDLL | None, str | None]:
    path = Path(os.environ.get("FORESIGHT_KERNELS_LIB", LIB_DIR / CPU_LIB))
    if not path.is_file():
        return None, f"{path} does not exist"
    try:
        lib = _declare(ctypes.CDLL(str(path)), _SIGNATURES)
    except (OSError, AttributeError) as e:
        return None, f"{path} cannot be loaded ({e})"
    if lib.fk_version() != ABI_VERSION:
        return None, f"{path} has ABI version {lib.fk_version()}, this package needs {ABI_VERSION}: rebuild it"
    requested = os.environ.get("FORESIGHT_KERNELS_ISA")
    if requested:
        lib.fk_set_isa(isa_level(requested))
    return lib, None


@functools.cache
def _loaded() -> tuple[ctypes.CDLL | None, str | None]:
    lib, error = _load_error()
    if lib is None:
        log.warning("native kernels unavailable: %s; the custom ops run their PyTorch reference (slower). %s",
                    error, BUILD_HINT)
    elif lib is not None:
        log.info("native kernels: %s (%s)", lib._name, ISAS[lib.fk_isa()])
    return lib, error


def cpu_library() -> ctypes.CDLL | None:
    """The CPU kernels, or None (then one warning was logged)."""
    return _loaded()[0]


@functools.cache
def cuda_library() -> ctypes.CDLL | None:
    """The compiled CUDA kernels where they were built and CUDA runs, else None."""
    path = LIB_DIR / CUDA_LIB
    if not path.is_file() or not torch.cuda.is_available():
        return None
    try:
        return _declare(ctypes.CDLL(str(path)), _CUDA_SIGNATURES)
    except (OSError, AttributeError) as e:
        log.warning("CUDA kernel library %s cannot be loaded (%s)", path, e)
        return None


def isa_level(name: str) -> int:
    if name not in ISAS:
        raise KernelError(f"FORESIGHT_KERNELS_ISA / use_isa: unknown instruction set {name!r}; choose one of {ISAS}")
    return ISAS.index(name)


@contextlib.contextmanager
def use_isa(name: str):
    """Run the CPU kernels with at most instruction set `name` inside the block (tests compare the paths)."""
    lib = cpu_library()
    if lib is None:
        raise KernelError(f"use_isa({name!r}): the native CPU library is not loaded; {BUILD_HINT}")
    level = isa_level(name)
    previous = lib.fk_isa()
    if lib.fk_set_isa(level) != level:
        lib.fk_set_isa(previous)
        raise KernelError(f"use_isa({name!r}): this CPU's best is {ISAS[lib.fk_cpu_isa()]}")
    try:
        yield
    finally:
        lib.fk_set_isa(previous)


def status() -> NativeStatus:
    lib, error = _loaded()
    cuda = LIB_DIR / CUDA_LIB
    return NativeStatus(cpu_library=lib._name if lib is not None else None, error=error,
                        cpu_isa=ISAS[lib.fk_cpu_isa()] if lib is not None else None,
                        isa=ISAS[lib.fk_isa()] if lib is not None else None,
                        vnni=bool(lib.fk_cpu_has_vnni()) if lib is not None else False,
                        cuda_library=str(cuda) if cuda.is_file() else None)


def check(code: int, op: str) -> None:
    """Raise for a non-zero return code of a native call."""
    if code:
        raise KernelError(f"native {op} failed: {_STATUS.get(code, code)}")


def ptr(t: torch.Tensor | None) -> int | None:
    return None if t is None else t.data_ptr()


def threads() -> int:
    """The calling thread's torch thread count: the native kernels use as many (ThreadSplit sets it per branch)."""
    return torch.get_num_threads()
