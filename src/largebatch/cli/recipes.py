"""``largebatch recipes``: the recipes, or one's resolved config as YAML (what ``train --config`` takes)."""

from __future__ import annotations

import argparse

from omegaconf import OmegaConf

from largebatch.api import load_config
from largebatch.cli.common import add_set
from largebatch.cli.exits import bad_input, exit_statuses
from largebatch.config import ConfigError, active_dict
from largebatch.plan import resolve_stages
from largebatch.recipes import get_recipe, recipe_names

NAME = "recipes"
HELP = "list recipes, or print one's resolved config"
DESCRIPTION = "List the recipes, or print one's resolved config as YAML (edit it and pass it to train --config)."
EXAMPLES = ["largebatch recipes", "largebatch recipes goyal2017_resnet50_imagenet_8k > my.yaml"]
EXIT_STATUS = "0 listed or printed; 2 bad input (an unknown recipe or key)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", nargs="?", help="a recipe name")
    add_set(parser)


def run(args: argparse.Namespace) -> int:
    if not args.name:
        for name in recipe_names():
            cfg = get_recipe(name)
            print(f"{name}\n    {cfg.description}\n    source: {cfg.source}")
        return 0
    with exit_statuses(bad_input(KeyError, ConfigError)):
        cfg = load_config(args.name, args.set)
    print(OmegaConf.to_yaml(OmegaConf.create(active_dict(cfg))), end="")
    print("# the settings of the optimizers, schedules and data sources not chosen here are left out")
    try:
        stages = resolve_stages(cfg, cfg.train.nproc)
        for st in stages:
            where = f" (batch stage {st.index}, from epoch {st.start_epoch})" if len(stages) > 1 else ""
            print(f"# derived for train.nproc={cfg.train.nproc}{where}: {st.plan.describe()}")
    except ConfigError as err:  # printed as part of the YAML: not an error of the command
        print(f"# not valid for train.nproc={cfg.train.nproc}: {err}")
    return 0
