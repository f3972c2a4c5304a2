"""``largebatch data check ROOT``: decode every image file of a data set; report bad and odd files.
Exit status 0 when no file is bad, 1 when some are, 2 for bad input (the report's path is checked
before any file is decoded)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from largebatch.cli.common import cannot_write
from largebatch.cli.exits import bad_input, exit_statuses, fail

NAME = "data check"
HELP = "decode every image file of a data set; report bad and odd files"
EXAMPLES = ["largebatch data check /data/imagenet --report bad_files.json"]
EXIT_STATUS = (
    "0 every file decodes; 1 some files are bad (listed); 2 bad input (no such folder, bad option, "
    "a --report path that cannot be written)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("root", help="the data set's root folder (e.g. holding train/ and val/)")
    parser.add_argument(
        "--report", default=None, help="also write the JSON report (every bad and odd file) to this path"
    )
    parser.add_argument("--workers", type=int, default=0, help="decoding processes (default: all CPU cores)")


def run(args: argparse.Namespace) -> int:
    if args.workers < 0:
        return fail(f"--workers {args.workers}: give 0 (all cores) or more")
    if args.report and (problem := cannot_write(args.report)):
        return fail(f"--report {args.report}: cannot write the report there ({problem}); give a writable path")
    # Imported here: largebatch.data imports torch (seconds), which `largebatch --help` and the other
    # subcommands' start must not wait for.
    from largebatch.data.check import check_dataset, summary_lines, write_report

    with exit_statuses(bad_input(FileNotFoundError)):
        report = check_dataset(args.root, workers=args.workers, progress=sys.stderr.isatty())
    for line in summary_lines(report):
        print(line)
    if args.report:
        with exit_statuses(
            bad_input(
                OSError,
                message=lambda err: (
                    f"--report {args.report}: cannot write the report ({err.strerror or err}); give a writable path"
                ),
            )
        ):
            write_report(report, Path(args.report))
        print(f"report: {args.report}")
    return 0 if report.ok else 1
