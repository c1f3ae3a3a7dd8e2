"""`ray job submit` of jobs/train.py against a real head started here, as a user runs it on a cluster.

The head gets its own temp dir and ports; at the end only the processes of that head (those whose command
line names its temp dir, and their descendants) are stopped, so any other local Ray keeps running."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

import defectray
from defectray.config import get_config

REPO = Path(__file__).resolve().parents[1]
RAY = [sys.executable, "-m", "ray.scripts.scripts"]


def _free_ports(n: int) -> list[int]:
    """n distinct free ports: every socket stays bound until all are picked (one at a time, the OS handed the
    same just-released port to two of Ray's components once, and `ray start` refused to start)."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


def _process_tree(marker: str) -> set[int]:
    """PIDs whose command line contains ``marker``, plus all their descendants (Linux /proc)."""
    table: dict[int, tuple[int, str]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{entry}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        table[int(entry)] = (ppid, cmd)
    found = {pid for pid, (_, cmd) in table.items() if marker in cmd and pid != os.getpid()}
    while True:
        children = {pid for pid, (ppid, _) in table.items() if ppid in found} - found
        if not children:
            return found
        found |= children


def _stop_head(temp_dir: str) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in _process_tree(temp_dir):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 10
        while _process_tree(temp_dir) and time.monotonic() < deadline:
            time.sleep(0.2)


@pytest.fixture
def ray_head():
    """A Ray head on 127.0.0.1 with token authentication (Ray 2.60's default for `ray start --head`)."""
    if not sys.platform.startswith("linux"):
        pytest.skip("the head is stopped through /proc")
    temp_dir = tempfile.mkdtemp(prefix="drtj", dir="/tmp")  # short: Ray's socket paths must stay < 108 bytes
    gcs, dashboard, client, agent = _free_ports(4)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env.update(RAY_AUTH_MODE="token", PYTHONWARNINGS="ignore")
    cmd = RAY + ["start", "--head", "--node-ip-address=127.0.0.1", f"--port={gcs}",
                 "--dashboard-host=127.0.0.1", f"--dashboard-port={dashboard}", "--include-dashboard=true",
                 f"--ray-client-server-port={client}", f"--dashboard-agent-listen-port={agent}",
                 "--num-cpus=2", f"--temp-dir={temp_dir}", "--disable-usage-stats"]
    try:
        subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=120)
        yield f"http://127.0.0.1:{dashboard}", env
    finally:
        _stop_head(temp_dir)
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_ray_job_submit_trains_a_loadable_model(ray_head, tiny_mvtec, tmp_path):
    address, env = ray_head
    config = get_config("cpu-small", image_size=32, recon_base_width=4, recon_depth=2, seg_base_width=4,
                        seg_depth=2, kernel_sizes=[7, 5], batch_size=4, epochs=1, max_minutes=None)
    (tmp_path / "tiny.json").write_text(config.to_json())
    out = tmp_path / "model"
    submit = RAY + ["job", "submit", "--address", address, "--working-dir", ".",
                    "--runtime-env", "jobs/runtime_env.yaml", "--",
                    "python", "jobs/train.py", "--data", str(tiny_mvtec), "--out", str(out),
                    "--config", str(tmp_path / "tiny.json"), "--gpu", "no"]
    # `ray start` returns before the head's dashboard agent has registered; until it has, the job server answers
    # "No available agent to submit job, please try again later" (CI hit this once on a loaded box), so retry.
    deadline = time.monotonic() + 90
    while True:
        proc = subprocess.run(submit, cwd=REPO, env=env, capture_output=True, text=True, timeout=400)
        log = proc.stdout + proc.stderr
        if proc.returncode == 0 or "No available agent" not in log or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert proc.returncode == 0 and re.search(r"Job '\S+' succeeded", log), log[-4000:]
    assert "[defectray train] trained dr-" in log  # the job's own summary line, streamed back
    detector = defectray.load_model(str(out / "model.safetensors"))
    assert detector.model_id in log and detector.threshold is not None
