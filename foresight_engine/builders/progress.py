"""A progress bar over a build's steps (load, plan, weights, calibration, one per exported stage, accuracy gate)."""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from tqdm.auto import tqdm


class BuildProgress:
    """`with BuildProgress(enabled) as bar: with bar.step("weights"): ...`. The bar names the step in flight and
    counts finished ones; it is drawn on stderr only when `enabled` and stderr is a terminal (tqdm's
    `disable=None`), so logs and CI output stay clean."""

    def __init__(self, enabled: bool):
        self._bar = tqdm(desc="build", unit="step", disable=None if enabled else True, leave=False,
                         bar_format="{desc}: {n_fmt}/{total_fmt} steps |{bar}| {elapsed} {postfix}")

    def expect(self, total: int) -> None:
        """Set the number of steps once the plan says which stages are exported."""
        self._bar.total = total
        self._bar.refresh()

    @contextmanager
    def step(self, what: str) -> Iterator[None]:
        self._bar.set_postfix_str(what)
        yield
        self._bar.update(1)

    def __enter__(self) -> "BuildProgress":
        return self

    def __exit__(self, *exc) -> None:
        self._bar.close()
