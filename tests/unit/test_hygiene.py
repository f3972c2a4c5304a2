"""Code hygiene as part of the suite: ruff's lint rules and formatter (pyproject.toml [tool.ruff]), the import
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
    proc = subprocess.run(
        [_tool("ruff"), "check", "--no-cache", "src", "tests", "benchmarks"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]


def test_ruff_format_leaves_the_code_as_it_is():
    proc = subprocess.run(
        [_tool("ruff"), "format", "--check", "--no-cache", "src", "tests", "benchmarks", "examples"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, (
        "run `ruff format src tests benchmarks examples`:\n" + proc.stdout[-4000:] + proc.stderr[-2000:]
    )


def test_import_layers_and_no_cycles():
    proc = subprocess.run([_tool("lint-imports"), "--no-cache"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0 and "BROKEN" not in proc.stdout, proc.stdout[-4000:] + proc.stderr[-2000:]
    assert proc.stdout.count("KEPT") == 2


# Modules that import the project's own modules (or the standard library) inside functions, and
# why: each keeps a command's start-up light or breaks a registration order. Every other module
# imports what it uses at the top. Third-party imports of optional or heavy packages (optuna,
# matplotlib, TensorBoard, DALI, fsspec, torchvision in torch-free paths) may stay local anywhere.
LOCAL_IMPORTS_ALLOWED = {
    "__init__.py": "largebatch.train is loaded on first use: `import largebatch` does not import torch",
    # The CLI's subcommand modules are imported to build the parser, so whatever imports torch is
    # imported in their run(): `largebatch --help`, `recipes` and `simulate` start without torch.
    "cli/train.py": "torch's elastic launcher and the worker, after main() has installed its SIGTERM handler",
    "cli/signals.py": "train.checkpoint (torch) only to report where a run stopped by a signal stands",
    "cli/data_check.py": "largebatch.data (torch) once the arguments are checked",
    "cli/data_prepare.py": "largebatch.data (torch) once the arguments are checked",
    "cli/critical_batch.py": "study.branch (torch) when the command runs",
    "cli/advise.py": "study.advise (torch) once the arguments are checked",
    "api.py": "load_config and prepare_run run before any worker starts and stay torch-free",
    "config/validation.py": "validate() reaches the model registry only for a user model (the config stays torch-free)",
    "plan.py": "the topology (torch.distributed) only for a topology-aware all-reduce",
    "data/__init__.py": "each data source is imported when chosen (DALI, fsspec and torchvision readers)",
    "recipes/__init__.py": "the recipe modules register themselves after the registry exists",
}


def test_function_local_imports_only_where_start_up_needs_them():
    import ast

    root = REPO / "src" / "largebatch"
    found = {}
    for path in sorted(root.rglob("*.py")):
        for fn in ast.walk(ast.parse(path.read_text())):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                if isinstance(node, (ast.Import, ast.ImportFrom)):
                    module = node.module if isinstance(node, ast.ImportFrom) else node.names[0].name
                    top = (module or "").split(".")[0]
                    if top == "largebatch" or top in sys.stdlib_module_names:
                        found.setdefault(path.relative_to(root).as_posix(), []).append(f"{module} (line {node.lineno})")
    assert set(found) == set(LOCAL_IMPORTS_ALLOWED), {k: v for k, v in found.items() if k not in LOCAL_IMPORTS_ALLOWED}
