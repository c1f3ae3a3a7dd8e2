"""Not built yet."""

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    pass


def run(args: argparse.Namespace) -> int:
    from defectray.cli import CommandError

    raise CommandError("not built yet")
