"""A progress bar over a build's steps (load, plan, weights, calibration, one per exported stage, accuracy gate)."""
from __future__ import annotations

from contextlib import ExitStack, contextmanager
from typing import Iterator

from tqdm.auto import tqdm
from tqdm.contrib.logging import logging_redirect_tqdm


class BuildProgress:
    """`with BuildProgress(enabled) as bar: with bar.step("weights"): ...`. The bar names the step in flight and
    counts finished ones; it is drawn on stderr only when `enabled` and stderr is a terminal (tqdm's
    `disable=None`), so logs and CI output stay clean. While it is drawn, log lines print above it."""

    def __init__(self, enabled: bool):
        self._bar = tqdm(desc="build", unit="step", disable=None if enabled else True, leave=False,
                         bar_format="{desc} {n_fmt}/{total_fmt} steps |{bar}| {elapsed}")
        self._stack = ExitStack()

    def expect(self, total: int) -> None:
        """Set the number of steps once the plan says which stages are exported."""
        self._bar.total = total
        self._bar.refresh()

    @contextmanager
    def step(self, what: str) -> Iterator[None]:
        self._bar.set_description(f"build: {what}")
        yield
        self._bar.update(1)

    def __enter__(self) -> "BuildProgress":
        if not self._bar.disable:
            self._stack.enter_context(logging_redirect_tqdm())
        return self

    def __exit__(self, *exc) -> None:
        self._bar.close()
        self._stack.close()
