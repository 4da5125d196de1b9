"""Results of the kernel bench (`bench/test_kernels.py`): each custom op's median time beside its contenders',
and the table the README quotes (the bench's terminal summary prints it)."""
from __future__ import annotations

from dataclasses import dataclass, field

RESULTS: list["KernelResult"] = []  # filled by bench/test_kernels.py, printed by bench/conftest.py


@dataclass
class KernelResult:
    op: str
    shape: str  # which preset's shapes, of which model part
    medians_ms: dict[str, float] = field(default_factory=dict)  # native, reference, inductor[, model code]

    def ratio(self, contender: str) -> float | None:
        """How many times faster the native op is than `contender` (None when it was not run)."""
        m = self.medians_ms
        return m[contender] / m["native"] if contender in m else None


def kernel_table(results: list[KernelResult]) -> str:
    """Markdown: native time and its speed-up over the reference, inductor's compile of it, and the model code."""
    lines = ["| op | shapes | native ms | vs reference | vs inductor | vs model code |", "|---|---|---|---|---|---|"]
    def cell(r: KernelResult, contender: str, missing: str = "-") -> str:
        ratio = r.ratio(contender)
        return missing if ratio is None else f"{ratio:.2f}x"
    for r in results:
        lines.append(f"| {r.op} | {r.shape} | {r.medians_ms['native']:.3f} | {cell(r, 'reference')} | "
                     f"{cell(r, 'inductor')} | {cell(r, 'model code', '(= reference)')} |")
    return "\n".join(lines)
