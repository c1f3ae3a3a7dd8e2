"""A pace for Ray Data's scheduling loop in the training pipeline.

Why: training consumes slower than synthesis produces (always on CPU, often on GPU), so Ray Data's streaming
executor (in the SplitCoordinator actor that feeds Ray Train) keeps finding task output that is ready but held
back by backpressure, and its loop then never blocks: it measured 0.6-0.9 of a core on a 2-core box, taken from
the trainer (BENCHMARKS.md, "Training pipeline"). Capping the loop at ~50 steps/s costs the stream nothing
measurable: one step moves whole blocks, each many batches.

Uses Ray Data's execution-callback hook (``DataContext.custom_execution_callback_classes``); the callback base
class lives in an internal module, so if a Ray release moves it the pipeline runs unpaced rather than failing.
"""

from __future__ import annotations

import time

try:
    from ray.data._internal.execution.execution_callback import ExecutionCallback
except ImportError:  # pragma: no cover - depends on the Ray release
    ExecutionCallback = None

SCHEDULING_STEP_S = 0.05


if ExecutionCallback is not None:

    class PacedSchedulingLoop(ExecutionCallback):
        """Sleeps out the rest of ``SCHEDULING_STEP_S`` after each scheduling step."""

        def __init__(self) -> None:
            self._last = 0.0

        def on_execution_step(self, executor) -> None:
            wait = self._last + SCHEDULING_STEP_S - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self._last = time.monotonic()


def pace_scheduling_loop(dataset) -> bool:
    """Pace ``dataset``'s execution (its own DataContext, which travels with it to the SplitCoordinator).
    Returns False where this Ray release offers no hook."""
    if ExecutionCallback is None:
        return False
    ctx = dataset.context
    if PacedSchedulingLoop not in ctx.custom_execution_callback_classes:
        ctx.custom_execution_callback_classes = [*ctx.custom_execution_callback_classes, PacedSchedulingLoop]
    return True
