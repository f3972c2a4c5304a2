"""``largebatch data prepare SRC DST``: an ImageNet-layout folder converted into pre-resized tar shards
with an index. Exit status 0 on success (files that cannot be decoded are left out and listed), 2 for
bad input."""

from __future__ import annotations

import argparse
import os
import sys

from largebatch.cli.common import cannot_write
from largebatch.cli.exits import bad_input, exit_statuses, fail

NAME = "data prepare"
HELP = "convert an ImageNet folder into pre-resized tar shards with an index"
EXAMPLES = ["largebatch data prepare /data/imagenet /data/imagenet-shards --max-side 256"]
EXIT_STATUS = "0 written (files that cannot be decoded are left out and listed); 2 bad input"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("src", help="ImageNet-layout folder (train/<wnid>/*, val/<wnid>/*)")
    parser.add_argument("dst", help="new directory for the shards (train with --set data.root=DST)")
    parser.add_argument("--max-side", type=int, default=256, help="shorter side at most this many pixels (default 256)")
    parser.add_argument("--quality", type=int, default=90, help="JPEG quality of the re-encoded images (default 90)")
    parser.add_argument("--shard-mb", type=float, default=256.0, help="approximate shard size in MiB (default 256)")
    parser.add_argument("--workers", type=int, default=0, help="processes (default: all CPU cores)")


def _os_error(args: argparse.Namespace, err: OSError) -> str:
    """A missing layout (a message of ours), or the file system's error on a path under SRC or DST."""
    if err.errno is None or not err.filename:
        return str(err)
    where = os.path.abspath(err.filename)
    if where.startswith(os.path.abspath(args.src) + os.sep):
        return f"SRC {args.src}: cannot read {where} ({err.strerror}); fix its permissions"
    return f"DST {args.dst}: cannot write {where} ({err.strerror}); give a writable folder with space"


def run(args: argparse.Namespace) -> int:
    if problem := cannot_write(args.dst, folder=True):
        return fail(f"DST {args.dst}: cannot write the shards there ({problem}); give a writable folder")
    # Imported here: largebatch.data imports torch (seconds), which `largebatch --help` and the other
    # subcommands' start must not wait for.
    from largebatch.data.shards import prepare

    with exit_statuses(bad_input(ValueError), bad_input(OSError, message=lambda err: _os_error(args, err))):
        manifest = prepare(
            args.src,
            args.dst,
            max_side_px=args.max_side,
            quality=args.quality,
            shard_mb=args.shard_mb,
            workers=max(args.workers, 0),
            progress=sys.stderr.isatty(),
        )
    for split, part in manifest["splits"].items():
        print(f"{split}: {part['samples']} images in {len(part['shards'])} shard(s)")
    for bad in manifest["bad_files"]:
        print(f"left out (cannot decode): {bad['path']} ({bad['error']})")
    print(f"train with: --set data.name=imagefolder --set data.root={args.dst}")
    return 0
