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
    for r in results:
        model = f"{r.ratio('model code'):.2f}x" if "model code" in r.medians_ms else "(= reference)"
        lines.append(f"| {r.op} | {r.shape} | {r.medians_ms['native']:.3f} | {r.ratio('reference'):.2f}x | "
                     f"{r.ratio('inductor'):.2f}x | {model} |")
    return "\n".join(lines)
