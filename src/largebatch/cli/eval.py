"""``largebatch eval``: a run directory, a checkpoint or a ``model_final.pt`` scored on the test or the
validation split. The work is :func:`largebatch.api.evaluate`; here the arguments and the JSON."""

from __future__ import annotations

import argparse
import json
import os

from largebatch.api import evaluate
from largebatch.cli.common import add_set, add_trust_plugins
from largebatch.cli.exits import bad_input, exit_statuses, fail
from largebatch.config import ConfigError

NAME = "eval"
HELP = "evaluate a run, a checkpoint or a model_final.pt on the test/validation split"
EXAMPLES = ["largebatch eval runs/b2048", "largebatch eval runs/b2048/checkpoints/ckpt_step00000072.pt --split val"]
EXIT_STATUS = (
    "0 evaluated (the result as JSON on stdout); 2 bad input (nothing usable at PATH, weights that do not "
    "fit the model, unknown key, missing data, a plugin named only by the run without --trust-plugins)"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "path",
        nargs="?",
        default=None,
        help="a run directory (its model_final.pt, else its newest valid checkpoint), a checkpoint file "
        "(runs/<run>/checkpoints/*.pt) or a model_final.pt with its run's config.json beside it",
    )
    parser.add_argument("--checkpoint", default=None, help="the same as PATH (kept for scripts)")
    parser.add_argument(
        "--split",
        default="test",
        choices=["test", "val"],
        help="test (default) or val: the data.val_size images held out of the training set",
    )
    add_set(parser)
    add_trust_plugins(parser)


def run(args: argparse.Namespace) -> int:
    target = args.path or args.checkpoint
    if not target:
        return fail("give what to evaluate: a run directory, a checkpoint or a model_final.pt (largebatch eval PATH)")
    with exit_statuses(bad_input(ConfigError, FileNotFoundError)):
        result = evaluate(target, args.set, split=args.split, trust_plugins=args.trust_plugins)
    if int(os.environ.get("RANK", "0")) == 0:  # under torchrun every rank has the same result
        print(json.dumps(result, indent=2))
    return 0
