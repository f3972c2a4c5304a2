"""``largebatch simulate``: the alpha-beta cost model of :mod:`largebatch.sim` (pure Python, no torch),
whose own module holds the options and the run: :mod:`largebatch.sim.cli`."""

from __future__ import annotations

from largebatch.sim.cli import add_arguments, run

__all__ = ["NAME", "HELP", "EXAMPLES", "EXIT_STATUS", "add_arguments", "run"]

NAME = "simulate"
HELP = "predict all-reduce time, step time and scaling efficiency at N GPUs (alpha-beta cost model, docs/comm.md)"
EXAMPLES = ["largebatch simulate --gpus 1024 --preset akiba2017 --out scaling.png"]
EXIT_STATUS = "0 predicted (the table on stdout); 2 bad input (one line naming the option)"
