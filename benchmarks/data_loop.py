"""CPU cost of Ray Data's scheduling loop while it feeds a slower trainer, with and without the pace
(defectray/pacing.py).

The training dataset (defectray.train.build_dataset, cpu-small on magnetic-tile) is read through
``streaming_split(1)`` as Ray Train reads it, by a consumer that takes one batch per ``--step-s`` seconds (a
CPU training step). Reported: CPU seconds per second of the SplitCoordinator actor (where the executor runs),
of the other Ray workers (synthesis tasks) and batches consumed. Each variant runs in a fresh Ray.

    python benchmarks/data_loop.py [--seconds 60] [--step-s 1.0]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

DEFAULT_DATA = "/work/shared/datasets/magnetic-tile"


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def ray_processes() -> dict[int, str]:
    out = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cmd.startswith("ray::"):
            out[int(pid)] = cmd.split()[0]
    return out


def one_variant(paced: bool, data: str, seconds: float, step_s: float) -> dict:
    import ray

    from defectray import io
    from defectray import pacing
    from defectray.config import get_config
    from defectray.train import build_dataset, build_sources, split_holdout

    if not paced:
        pacing.pace_scheduling_loop = lambda ds: False
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    cfg = get_config("cpu-small")
    train_paths, _ = split_holdout(io.training_images(data), cfg.val_fraction, cfg.seed)
    dataset, _ = build_dataset(train_paths, cfg, build_sources(cfg, train_paths), cfg.batch_size, cfg.epochs)
    it = dataset.streaming_split(1)[0].iter_batches(batch_size=cfg.batch_size)
    t0, batches, first = time.time(), 0, None
    before: dict[int, float] = {}
    for batch in it:
        batches += 1
        if first is None:  # measure from the first batch: start-up is not the steady state
            first = time.time() - t0
            before = {pid: cpu_seconds(pid) for pid in ray_processes()}
            t1 = time.time()
        time.sleep(step_s)
        if time.time() - t1 > seconds:
            break
    elapsed = time.time() - t1
    usage: dict[str, float] = {}
    for pid, name in ray_processes().items():
        try:
            used = (cpu_seconds(pid) - before.get(pid, 0.0)) / elapsed
        except OSError:
            continue
        key = "coordinator" if "SplitCoordinator" in name else "other ray workers"
        usage[key] = usage.get(key, 0.0) + used
    ray.shutdown()
    return {"paced": paced, "first_batch_s": round(first, 1), "batches": batches,
            **{f"{k} cpu/s": round(v, 3) for k, v in sorted(usage.items())}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=DEFAULT_DATA)
    ap.add_argument("--seconds", type=float, default=60.0)
    ap.add_argument("--step-s", type=float, default=1.0)
    ap.add_argument("--variant", choices=("paced", "unpaced"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.variant:
        print(json.dumps(one_variant(args.variant == "paced", args.data, args.seconds, args.step_s)))
        return
    results = []
    for variant in ("unpaced", "paced", "unpaced", "paced"):  # alternated: the box's load drifts
        out = subprocess.run([sys.executable, __file__, "--variant", variant, "--data", args.data,
                              "--seconds", str(args.seconds), "--step-s", str(args.step_s)],
                             capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1]
        results.append(json.loads(out))
        print(out, flush=True)
    print(json.dumps({"load_average": os.getloadavg(), "results": results}))


if __name__ == "__main__":
    main()
