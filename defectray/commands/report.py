"""One self-contained HTML page from a scoring run.

Reads the Parquet table written by `defectray score` (a file or a folder/prefix, local or s3://) and
writes a single HTML file: counts (images, scored, anomalous, errors), the score histogram with the
threshold, the most anomalous images with their heat maps, and every error. Pictures are embedded as
downscaled thumbnails, so the page opens in any browser with no server and no network.

Images scored more than once (a resumed run) are counted once, from their latest successful row.
The threshold line is --threshold if given, else the midpoint between the highest score flagged
normal and the lowest score flagged anomalous in the table. A missing image or anomaly map shows a
placeholder and a note; it does not stop the report.
"""

from __future__ import annotations

import argparse

EXAMPLES = """examples:
  defectray report --scores runs/score-2026-11-25 --out report.html
  defectray report --scores s3://factory/scores/line-3/ --out s3://factory/reports/line-3.html --top-k 48
  defectray report --scores runs/score/part-0.parquet --out report.html --threshold 0.42 --title "Line 3, night shift"
"""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scores", required=True, metavar="URI",
                        help="scoring output: a .parquet file or a folder/prefix of them (local, s3://, ...)")
    parser.add_argument("--out", required=True, metavar="FILE.html", help="where to write the page (local or URI)")
    parser.add_argument("--top-k", type=int, default=24, metavar="K",
                        help="how many of the highest-scoring images to show with heat maps (default: 24)")
    parser.add_argument("--threshold", type=float, default=None,
                        help="draw the threshold at this score (default: derived from the is_anomalous flags)")
    parser.add_argument("--title", default=None, help="page title (default: 'Defect scoring report')")


def run(args: argparse.Namespace) -> int:
    from defectray.cli import CommandError
    from defectray.report import write_report

    if args.top_k < 0:
        raise CommandError(f"--top-k must be 0 or more, not {args.top_k}")
    if not args.out.lower().endswith((".html", ".htm")):
        raise CommandError(f"--out should name an .html file, not {args.out!r}")
    out = write_report(args.scores, args.out, top_k=args.top_k, title=args.title, threshold=args.threshold)
    print(f"wrote {out}")
    return 0
