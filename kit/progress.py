"""Phase reporting for long steps: the timings a step records anyway double as its progress (a CLI's bar)."""

from __future__ import annotations

from collections.abc import Callable


class PhaseTimings(dict):
    """A step's phase timings ({phase_s: seconds}) that report each phase as it finishes."""

    def __init__(self, report: Callable[[str], None] | None = None) -> None:
        super().__init__()
        self.report = report

    def __setitem__(self, phase: str, seconds: float) -> None:
        super().__setitem__(phase, seconds)
        if self.report is not None:
            self.report(phase.removesuffix("_s").replace("_", " "))
