"""Every subcommand's --help has a description, an example and its exit statuses; log lines and
the progress bar do not glue together."""

import argparse
import io
import logging
import re
import sys

import pytest
from tqdm import tqdm

from largebatch.cli import EXAMPLES, EXIT_CODES, build_parser
from largebatch.dist.env import configure_logging


def _subparsers(parser: argparse.ArgumentParser, prefix: str = ""):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                full = f"{prefix}{name}"
                nested = list(_subparsers(sub, full + " "))
                yield from nested or [(full, sub)]


def test_every_subcommand_help_has_a_description_an_example_and_exit_statuses():
    commands = dict(_subparsers(build_parser()))
    assert set(commands) == set(EXIT_CODES) == set(EXAMPLES)
    for name, parser in commands.items():
        text = parser.format_help()
        assert parser.description and parser.description in text, name
        assert "examples:\n  largebatch " + name in text, name
        assert "exit status: 0 " in text and " 2 bad input" in text, name
        for example in EXAMPLES[name]:
            assert example.startswith(f"largebatch {name}"), example


@pytest.mark.parametrize("command", ["train", "eval", "sweep"])
def test_help_exits_0_and_names_the_exit_statuses(command, capsys):
    with pytest.raises(SystemExit) as stop:
        build_parser().parse_args([command, "--help"])
    assert stop.value.code == 0
    assert "exit status:" in capsys.readouterr().out


def test_log_lines_do_not_glue_onto_the_progress_bar(monkeypatch):
    terminal = io.StringIO()
    monkeypatch.setattr(sys, "stderr", terminal)
    configure_logging(0)
    try:
        bar = tqdm(total=10, file=terminal, ascii=True, disable=False, leave=False)
        bar.update(3)
        logging.getLogger("largebatch.test").info("a log line while the bar is live")
        bar.close()
    finally:
        configure_logging(0)  # back to the real stderr
    text = terminal.getvalue()
    assert "it/s]" in text  # the bar was drawn
    (segment,) = [seg for seg in re.split(r"[\r\n]", text) if "a log line" in seg]
    # the bar's line is cleared before the record is written: the record is a line of its own
    # (a plain StreamHandler wrote it right after the bar: '... 0/10 [00:00<?, ?it/s]05:01:52 [rank 0] ...')
    assert "it/s" not in segment and "|" not in segment, repr(text)
    assert re.fullmatch(r"\d\d:\d\d:\d\d \[rank 0\] INFO largebatch.test: a log line while the bar is live", segment)
