"""Nightly scoring job for a Ray cluster: the same options as `defectray score`, run as a Ray job.

    RAY_ADDRESS=http://127.0.0.1:8265 ray job submit --working-dir . \\
        --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/score.py --model s3://models/tiles.safetensors \\
        --input s3://factory/2024-06-01/ --output s3://results/2024-06-01/ --actors 1,4

Credentials come from the nodes (instance profiles) or the AWS_* environment of the workers, never from
the command line. Exit status 0 when the job finished (error rows included), 2 on a user error.
"""

from __future__ import annotations

import sys

from defectray.cli import main as cli_main


def main(argv: list[str] | None = None) -> int:
    """`defectray score` itself, so the job and the CLI share one parser and one error handling."""
    return cli_main(["score", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
