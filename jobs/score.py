"""Nightly scoring job for a Ray cluster: the same options as `defectray score`, run as a Ray job.

    RAY_ADDRESS=http://127.0.0.1:8265 ray job submit --working-dir . \\
        --runtime-env jobs/runtime_env.yaml -- \\
        python jobs/score.py --model s3://models/tiles.safetensors \\
        --input s3://factory/2024-06-01/ --output s3://results/2024-06-01/ --actors 1,4

Credentials come from the nodes (instance profiles) or the AWS_* environment of the workers, never from
the command line. Exit status 0 when the job finished (error rows included), 2 on a user error.
"""

from __future__ import annotations

import argparse
import sys

from defectray.commands import score as score_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jobs/score.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    score_command.add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return score_command.run(args)
    except (FileNotFoundError, ValueError, PermissionError) as e:
        print(f"jobs/score.py: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
