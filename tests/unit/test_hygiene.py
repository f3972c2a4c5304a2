"""Code hygiene as part of the suite: ruff's lint rules (pyproject.toml [tool.ruff]) and the import
layering and acyclicity contracts of docs/architecture.md (pyproject.toml [tool.importlinter])."""

import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(Path(sys.executable).parent))
    assert path, f"{name} is not installed next to {sys.executable}: pip install -e '.[test]'"
    return path


def test_ruff_lint_passes():
    proc = subprocess.run([_tool("ruff"), "check", "--no-cache", "src", "tests", "benchmarks"], cwd=REPO,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_import_layers_and_no_cycles():
    proc = subprocess.run([_tool("lint-imports"), "--no-cache"], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert proc.returncode == 0 and "BROKEN" not in proc.stdout, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.stdout.count("KEPT") == 2
