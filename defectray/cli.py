"""`defectray` command line: a thin shell over the library functions.

Each sub-command lives in ``defectray/commands/<name>.py`` with ``add_arguments(parser)`` and
``run(args) -> int``; modules are imported only when their command runs, so ``--help`` stays fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> one-line description (the module is defectray.commands.<name with - replaced by _>)
COMMANDS = {
    "demo": "train, score, evaluate and report on a small built-in sample, on an embedded local Ray",
    "synth": "write synthetic defect samples and a preview sheet (grid.png)",
    "train": "train a model on normal images (Ray Train + Ray Data)",
    "evaluate": "measure a model on an MVTec-layout test split (AUROC, AUPRO, AP, F1) with pictures",
    "score": "score an image archive with Ray Data -> Parquet table of scores + mask images",
    "report": "one self-contained HTML page from a scoring run",
}


class CommandError(ValueError):
    """A user-facing error: printed as one line, exit status 2, no traceback."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="defectray",
        description="Industrial defect detection trained on defect-free images only, run on Ray.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="Run `defectray COMMAND --help` for each command's options and examples.",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, help_text in COMMANDS.items():
        module = importlib.import_module(f"defectray.commands.{name.replace('-', '_')}")
        p = sub.add_parser(
            name,
            help=help_text,
            description=(module.__doc__ or help_text).strip(),
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog=getattr(module, "EXAMPLES", None),
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "_run", None):
        parser.print_help()
        return 0
    try:
        return int(args._run(args) or 0)
    except (CommandError, FileNotFoundError, ValueError, PermissionError) as e:
        print(f"defectray {args.command}: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"defectray {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
