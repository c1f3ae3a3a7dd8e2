"""Training job for a Ray cluster: the same options as `defectray train`, run as a Ray job.

    RAY_ADDRESS=http://127.0.0.1:8265 ray job submit --working-dir . \\
        --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/train.py --data s3://factory/tiles/ --out s3://models/tiles/ \\
        --profile paper --workers 4 --storage-path s3://models/runs/ --name tiles-v1

Submitting the same job again with the same --name (and --storage-path) resumes from the last checkpoint.
Credentials come from the nodes (instance profiles) or the AWS_* environment of the workers, never from the
command line. Exit status 0 with the model written, 2 on a user error.
"""

from __future__ import annotations

import sys

from defectray.cli import main as cli_main


def main(argv: list[str] | None = None) -> int:
    """`defectray train` itself, so the job and the CLI share one parser and one error handling."""
    return cli_main(["train", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
