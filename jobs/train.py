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

import argparse
import sys

from defectray.commands import train as train_command


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="jobs/train.py", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    train_command.add_arguments(parser)
    args = parser.parse_args(argv)
    from defectray.cli import CommandError

    try:
        return train_command.run(args)
    except (CommandError, FileNotFoundError, ValueError, PermissionError) as e:
        print(f"jobs/train.py: error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
