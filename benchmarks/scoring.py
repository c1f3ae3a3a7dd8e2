"""Batch scoring benchmark: the whole Ray Data job (defectray.score.score_archive) against a plain
single-process loop of read + decode + Detector.predict over the same files, and the memory of a long run.

    python benchmarks/scoring.py                       # throughput (cpu-small, 240 images) + memory (10,000)
    python benchmarks/scoring.py --n 96 --memory-n 2000

Images are the development data set's JPEGs (magnetic-tile, ~200-600 px grayscale), hard-linked under
nested folders as many times as needed. The throughput model is an untrained `cpu-small` model (speed does
not depend on the weights); the memory run uses a tiny model so that 10,000 images take minutes: it
measures the pipeline (reading, decoding, masks, Parquet), which is what could grow with the archive.
Memory is the proportional set size (PSS, shared pages split between sharers) summed over this process
and every process below it (the local Ray: raylet, object store, workers, actors), sampled every 0.25 s.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

DATASET = Path(__file__).resolve().parents[2] / "shared" / "datasets" / "magnetic-tile"


def make_archive(root: Path, n: int) -> list[str]:
    sources = sorted(glob.glob(str(DATASET / "**" / "*.jpg"), recursive=True))
    sources = [s for s in sources if "ground_truth" not in s]
    if not sources:
        sys.exit(f"no images under {DATASET}")
    for i in range(n):
        dst = root / f"line{i % 4}" / f"batch{i // 400:03d}" / f"img{i:05d}.jpg"
        dst.parent.mkdir(parents=True, exist_ok=True)
        os.link(sources[i % len(sources)], dst)
    return sorted(str(p) for p in root.rglob("*.jpg"))


def save_tiny_model(path: str, **overrides) -> str:
    import torch

    from defectray.config import get_config
    from defectray.models import build_model
    from defectray.models.modelfile import save_model

    torch.manual_seed(0)
    cfg = get_config("cpu-small", **overrides)
    save_model(path, build_model(cfg), cfg, calibration={"threshold": 0.5})
    return path


def plain_loop(model: str, files: list[str], batch_size: int) -> float:
    """images/s of the simplest thing that could work: one process, read + decode + predict."""
    from defectray.io import decode_image, read_bytes
    from defectray.models.modelfile import load_model

    start = time.perf_counter()
    detector = load_model(model)
    for i in range(0, len(files), batch_size):
        images = [decode_image(read_bytes(f)) for f in files[i : i + batch_size]]
        detector.predict(images)
    return len(files) / (time.perf_counter() - start)


def _pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def _tree(root: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    ppid = int(f.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(d))
            except (OSError, IndexError, ValueError):
                pass
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(children.get(pid, []))
    return out


class MemorySampler:
    def __init__(self, every_s: float = 0.25):
        self.every_s, self.samples, self._stop = every_s, [], threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        start = time.perf_counter()
        while not self._stop.is_set():
            total = sum(_pss_kib(p) for p in _tree(os.getpid()))
            self.samples.append((time.perf_counter() - start, total / 1024))
            self._stop.wait(self.every_s)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def job(model: str, input_dir: str, output: str, batch_size: int, actors: tuple[int, int]) -> dict:
    from defectray.score import score_archive

    shutil.rmtree(output, ignore_errors=True)
    start = time.perf_counter()
    summary = score_archive(model, input_dir, output, batch_size=batch_size, actors=actors, progress=False)
    summary["wall_images_per_s"] = summary["files"] / (time.perf_counter() - start)
    return summary


def compare_readers(files: list[str], batch_size: int) -> dict:
    """files/s of the two ways to get bytes into the pipeline: Ray's read_binary_files (a failed read fails
    the task) against a dataset of URIs read inside map_batches (a failed read is one error row)."""
    import ray

    from defectray.score import _read_many

    def sizes(batch):
        return {"n": [len(b) for b in batch["bytes"]]}

    def read(batch):
        return {"n": [len(b) if isinstance(b, bytes) else -1 for b in _read_many(list(batch["image_path"]))]}

    out = {}
    for name, make in (
        ("read_binary_files", lambda: ray.data.read_binary_files(files, include_paths=True)
         .map_batches(sizes, batch_size=batch_size)),
        ("from_items+map_batches", lambda: ray.data.from_items([{"image_path": f} for f in files],
                                                                override_num_blocks=max(1, len(files) // batch_size))
         .map_batches(read, batch_size=batch_size)),
    ):
        start = time.perf_counter()
        total = sum(row["n"] for row in make().iter_rows())
        out[name] = round(len(files) / (time.perf_counter() - start), 1)
        assert total > 0
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int, default=240, help="images for the throughput comparison")
    parser.add_argument("--memory-n", type=int, default=10_000, help="images for the memory run (0: skip)")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()

    import ray

    work = Path(args.work or tempfile.mkdtemp(prefix="defectray-bench-"))
    results: dict = {"cpus": os.cpu_count(), "batch_size": args.batch_size}
    ray.init(num_cpus=os.cpu_count(), include_dashboard=False, log_to_driver=False)
    try:
        if args.n:
            model = save_tiny_model(str(work / "cpu-small.safetensors"))
            files = make_archive(work / f"archive{args.n}", args.n)
            base = plain_loop(model, files, args.batch_size)
            runs = {}
            for actors in ((1, 1), (1, 2)):
                s = job(model, str(work / f"archive{args.n}"), str(work / "out"), args.batch_size, actors)
                runs[f"{actors[0]},{actors[1]}"] = round(s["wall_images_per_s"], 2)
            base_after = plain_loop(model, files, args.batch_size)
            results["readers_files_per_s"] = compare_readers(files * 10, args.batch_size)
            results["throughput"] = {
                "model": "cpu-small (128 px, untrained)", "images": args.n,
                "plain_loop_images_per_s": [round(base, 2), round(base_after, 2)],
                "job_images_per_s_by_actors": runs,
                "ratio_best_job_to_mean_loop": round(max(runs.values()) / ((base + base_after) / 2), 2),
            }
            print(json.dumps(results["throughput"]), results["readers_files_per_s"], flush=True)
        if args.memory_n:
            tiny = save_tiny_model(str(work / "tiny.safetensors"), image_size=32, recon_base_width=4,
                                   seg_base_width=4)
            mem = {}
            for n in sorted({min(1000, args.memory_n), args.memory_n}):
                make_archive(work / f"mem{n}", n)
                idle = sum(_pss_kib(p) for p in _tree(os.getpid())) / 1024
                with MemorySampler() as sampler:
                    s = job(tiny, str(work / f"mem{n}"), str(work / "memout"), args.batch_size, (1, 2))
                ts = sampler.samples
                tail = [m for t, m in ts if t >= ts[-1][0] / 2]
                head = [m for t, m in ts if t < ts[-1][0] / 2]
                mem[n] = {"images_per_s": round(s["wall_images_per_s"], 1), "idle_mib": round(idle),
                          "peak_mib": round(max(m for _, m in ts)),
                          "peak_first_half_mib": round(max(head)), "peak_second_half_mib": round(max(tail)),
                          "rows": s["files"], "ok": s["ok"]}
                print(n, json.dumps(mem[n]), flush=True)
                shutil.rmtree(work / f"mem{n}", ignore_errors=True)
            results["memory"] = mem
    finally:
        ray.shutdown()
        if not args.work:
            shutil.rmtree(work, ignore_errors=True)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
