"""When a forward runs under bf16 autocast: always on CUDA; on a CPU when ``Config.cpu_bf16`` asks for it. One
rule for training (TrainStep) and inference (the Detector), resolved on the machine that runs the model."""

from __future__ import annotations

import functools

import torch

CPU_BF16_MODES = ("off", "on", "auto")


@functools.cache  # the CPU does not change within a process; every TrainStep of a test suite would re-read it
def cpu_has_bf16() -> bool:
    """Whether this CPU has bf16 arithmetic in hardware (x86 AVX512-BF16 or AMX-BF16, Arm BF16); Linux only.
    Elsewhere oneDNN emulates bf16 and a step gets slower, not faster."""
    try:
        with open("/proc/cpuinfo") as f:
            words = set(f.read().split())
    except OSError:
        return False
    return bool(words & {"avx512_bf16", "amx_bf16", "bf16"})


def cpu_bf16_enabled(mode: str) -> bool:
    if mode not in CPU_BF16_MODES:
        raise ValueError(f"cpu_bf16 must be one of {', '.join(CPU_BF16_MODES)}, not {mode!r}")
    return mode == "on" or (mode == "auto" and cpu_has_bf16())


def bf16_autocast_on(device: torch.device, cpu_bf16: bool) -> bool:
    """Whether a forward on ``device`` runs under bf16 autocast (``cpu_bf16``: ``cpu_bf16_enabled``'s answer)."""
    return device.type == "cuda" or (device.type == "cpu" and cpu_bf16)
