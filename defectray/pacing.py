"""A pace for Ray Data's scheduling loop in the training pipeline.

Why: training consumes slower than synthesis produces (always on CPU, often on GPU), so Ray Data's streaming
executor (in the SplitCoordinator actor that feeds Ray Train) keeps finding task output that is ready but held
back by backpressure, and its loop then never blocks: it measured 0.6-0.9 of a core on a 2-core box, taken from
the trainer (BENCHMARKS.md, "Training pipeline"). So a step that changed nothing is followed by a short sleep;
steps that launch tasks or move outputs are not slowed (a blanket sleep stalled start-up: the read operator
launches one task per step).

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


def _progress(executor) -> tuple | None:
    """Counters that move whenever a scheduling step did something (a task launched, an output produced or
    handed on); None if this Ray release does not expose them."""
    try:
        return tuple((m.num_tasks_submitted, m.num_task_outputs_generated, m.num_outputs_taken)
                     for m in (op.metrics for op in executor._topology))
    except Exception:
        return None


if ExecutionCallback is not None:

    class PacedSchedulingLoop(ExecutionCallback):
        """Sleeps ``SCHEDULING_STEP_S`` after a scheduling step that changed nothing. Steps that launch tasks
        or move outputs run back to back: start-up dispatches hundreds of read tasks, one per step."""

        def __init__(self) -> None:
            self._last: tuple | None = None

        def on_execution_step(self, executor) -> None:
            now = _progress(executor)
            if now is None or now == self._last:
                time.sleep(SCHEDULING_STEP_S)
            self._last = now


def pace_scheduling_loop(dataset) -> bool:
    """Pace ``dataset``'s execution (its own DataContext, which travels with it to the SplitCoordinator).
    Returns False where this Ray release offers no hook."""
    if ExecutionCallback is None:
        return False
    ctx = dataset.context
    if PacedSchedulingLoop not in ctx.custom_execution_callback_classes:
        ctx.custom_execution_callback_classes = [*ctx.custom_execution_callback_classes, PacedSchedulingLoop]
    return True
