"""The shape of ``largebatch.cli``: every subcommand module declares its help, examples and exit
statuses; exceptions become exit statuses in one place (cli/exits.py); the package imports nothing
slow before main() has installed its SIGTERM handler, and torch only where a command needs it."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import largebatch.cli as cli
from largebatch.cli.exits import CommandError, bad_input, exit_statuses, failed
from largebatch.config import ConfigError

CLI = Path(cli.__file__).parent
SHARED = {"__init__.py", "__main__.py", "common.py", "exits.py", "signals.py"}


def test_every_subcommand_module_is_registered_and_declares_its_help():
    modules = {p.stem for p in CLI.glob("*.py") if p.name not in SHARED}
    assert modules == set(cli.COMMANDS)  # a module left out of COMMANDS would be no subcommand
    names = [command.NAME for command in cli.commands()]
    assert len(set(names)) == len(names)
    for command in cli.commands():
        assert command.NAME.replace(" ", "_").replace("-", "_") == command.__name__.rsplit(".", 1)[1]
        assert command.HELP and command.EXAMPLES and command.EXIT_STATUS.startswith("0 "), command.NAME
        assert callable(command.add_arguments) and callable(command.run), command.NAME


# The except clauses a CLI module may hold: stops by a signal, a note printed in the output, and the
# argument types' ValueError (argparse reports their ArgumentTypeError); none of them chooses an
# error's exit status (those are exit_statuses' rules).
EXCEPT_ALLOWED = {
    "train.py": {"WorkerFailed", "SignalException"},  # where a run stopped by a signal stands
    "sweep.py": {"KeyboardInterrupt", "ValueError"},  # --tune: the study continues where it stopped (75)
    "recipes.py": {"ConfigError"},  # "# not valid for train.nproc=N" in the printed YAML
    "common.py": {"ValueError"},
}


def _handled(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ExceptHandler):
            types = node.type.elts if isinstance(node.type, ast.Tuple) else [node.type]
            names |= {t.id if isinstance(t, ast.Name) else ast.unparse(t) for t in types}
    return names


@pytest.mark.parametrize("name", sorted(set(cli.COMMANDS) | {"signals", "common"}))
def test_exceptions_become_exit_statuses_only_through_exits_py(name):
    path = CLI / f"{name}.py"
    assert _handled(path) <= EXCEPT_ALLOWED.get(path.name, set())
    assert "largebatch: error:" not in path.read_text()  # the line is exits.fail's


def test_exit_statuses_tries_the_rules_in_order_and_passes_other_exceptions_through():
    rules = (bad_input(FileNotFoundError), bad_input(OSError, message=lambda err: f"os: {err}"), failed(RuntimeError))
    for raised, message, code in [
        (FileNotFoundError("no data"), "no data", 2),
        (PermissionError("denied"), "os: denied", 2),
        (RuntimeError("a worker died"), "a worker died", 1),
    ]:
        with pytest.raises(CommandError) as caught, exit_statuses(*rules):
            raise raised
        assert (caught.value.message, caught.value.code) == (message, code)
    with pytest.raises(KeyError), exit_statuses(*rules):
        raise KeyError("not listed")
    with pytest.raises(CommandError) as caught, exit_statuses(bad_input(KeyError, ConfigError)):
        raise KeyError("unknown recipe 'x'")
    assert caught.value.message == "unknown recipe 'x'"  # a KeyError's text without the quotes str() adds


def test_main_prints_a_command_error_as_one_line(capsys):
    assert cli.main(["recipes", "no_such_recipe"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("largebatch: error: ") and err.count("\n") == 1


def _fresh(code: str) -> str:
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout.strip().splitlines()[-1]


def test_importing_the_cli_imports_no_subcommand_and_nothing_slow():
    loaded = _fresh(
        "import sys, largebatch.cli; "
        "print(sorted(m for m in sys.modules if m.startswith(('largebatch', 'omegaconf', 'torch'))))"
    )
    light = ["largebatch", "largebatch._version", "largebatch.errors", "largebatch.cli", "largebatch.cli.exits"]
    assert loaded == str(sorted([*light, "largebatch.cli.signals"]))


@pytest.mark.parametrize("argv", [["--help"], ["recipes"], ["simulate", "--gpus", "8"], ["advise", "--preset", "x"]])
def test_commands_that_need_no_torch_start_without_it(argv):
    code = (
        "import contextlib, io, sys\n"
        "from largebatch.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        "    try:\n"
        f"        main({argv!r})\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print([m for m in ('torch', 'numpy') if m in sys.modules])\n"
    )
    assert _fresh(code) == "[]"
