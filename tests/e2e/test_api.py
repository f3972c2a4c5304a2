"""The Python API as a user meets it, from the built wheel (not the editable source tree): a user's own
model and data set named as ``module:callable``, ``largebatch.train`` on 2 workers, the model card
beside ``model_final.pt`` read by plain torch, ``largebatch eval RUN_DIR``, ``--config`` fed a run's
config.json and the YAML of ``largebatch recipes``, and plug-in errors refused before any worker."""

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]

USER_MODULE = textwrap.dedent('''
    """A user's own model and data set: 2 classes, a bright top half or a bright bottom half."""
    import torch


    def tiny_net(*, num_classes, in_channels):
        return torch.nn.Sequential(
            torch.nn.Conv2d(in_channels, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
            torch.nn.AdaptiveAvgPool2d((2, 1)), torch.nn.Flatten(), torch.nn.Linear(16, num_classes))


    def halves(*, root, seed):
        g = torch.Generator().manual_seed(seed)

        def split(n):
            labels = torch.randint(0, 2, (n,), generator=g)
            images = torch.randint(0, 90, (n, 1, 12, 12), generator=g, dtype=torch.uint8)
            for i, label in enumerate(labels.tolist()):
                rows = slice(0, 6) if label == 0 else slice(6, 12)
                images[i, :, rows] += 120
            return images, labels

        (train_x, train_y), (test_x, test_y) = split(1536), split(512)
        return {"train_images": train_x, "train_labels": train_y, "test_images": test_x, "test_labels": test_y,
                "num_classes": 2, "classes": ["top", "bottom"]}


    def not_a_model(*, num_classes, in_channels):
        return "a string"
''')

OVERRIDES = [
    "data.name=userplug:halves",
    "model.name=userplug:tiny_net",
    "train.epochs=3",
    "train.global_batch_size=128",
    "train.bn.batch_size=32",
    "optim.base_lr=0.2",
    "schedule.warmup_epochs=0.5",
    "schedule.decay_epochs=[2]",
    "data.val_size=256",
    "train.log_every_steps=4",
]


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The package built as a wheel from a copy of the repository and installed into its own folder,
    which comes first on PYTHONPATH, with the user's module beside it."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src_copy"
    shutil.copytree(REPO / "src", src / "src", ignore=shutil.ignore_patterns("__pycache__", "*.egg-info"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            str(src),
            "-w",
            str(root / "dist"),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = (root / "dist").glob("largebatch-*.whl")
    site = root / "site"
    inst = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(site), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert inst.returncode == 0, inst.stderr[-2000:]
    work = root / "work"
    work.mkdir()
    (work / "userplug.py").write_text(USER_MODULE)
    env = dict(os.environ, PYTHONPATH=f"{site}{os.pathsep}{work}", PYTHONUNBUFFERED="1")
    return site, work, env


def python(code: str, *, env, cwd, timeout=300):
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)], cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout
    )


@pytest.fixture(scope="module")
def trained(installed):
    site, work, env = installed
    out = work / "run"
    proc = python(
        f"""
        import json, largebatch
        from largebatch.optim import Lamb, Lars, RMSpropWarmup, param_groups
        summary = largebatch.train("goyal2017_fashion_mnist", overrides={OVERRIDES!r}, nproc=2, out="run")
        print("LB_FILE", largebatch.__file__)
        print("SUMMARY", json.dumps(summary))
    """,
        env=env,
        cwd=work,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in proc.stdout.splitlines() if line.startswith(("LB_FILE", "SUMMARY")))
    return site, work, env, out, lines


def test_train_from_the_installed_wheel_with_a_user_model_and_data_set(trained):
    site, work, env, out, lines = trained
    assert Path(lines["LB_FILE"]).resolve().is_relative_to(site.resolve())  # the wheel, not the source tree
    summary = json.loads(lines["SUMMARY"])
    assert summary["world_size"] == 2 and summary["global_batch_size"] == 128 and summary["run_dir"] == "run"
    assert summary["top1"] >= 95.0 and summary["val_top1"] >= 95.0, summary
    assert json.loads((out / "summary.json").read_text())["top1"] == summary["top1"]


def test_model_card_lets_plain_torch_reproduce_the_test_accuracy(trained):
    site, work, env, out, lines = trained
    card = json.loads((out / "model_final.json").read_text())
    assert card["classes"] == ["top", "bottom"] and card["num_classes"] == 2
    assert card["input"]["channels"] == 1 and card["input"]["size_px"] == [12, 12]
    # plain torch and the user's own module only: the card says how to normalize
    proc = python(
        """
        import json, torch, userplug
        card = json.load(open("run/model_final.json"))
        model = userplug.tiny_net(num_classes=card["num_classes"], in_channels=card["input"]["channels"])
        model.load_state_dict(torch.load("run/model_final.pt", weights_only=True))
        data = userplug.halves(root="", seed=0)
        norm = card["input"]["normalization"]
        mean, std = (torch.tensor(norm[k]).view(1, -1, 1, 1) for k in ("mean", "std"))
        x = (data["test_images"].float() / 255 - mean) / std
        with torch.no_grad():
            top1 = (model.eval()(x).argmax(1) == data["test_labels"]).float().mean().item() * 100
        print("PLAIN", top1)
    """,
        env=dict(env, PYTHONPATH=str(work)),
        cwd=work,
    )  # not even largebatch on the path
    assert proc.returncode == 0, proc.stderr[-2000:]
    plain = float(proc.stdout.split("PLAIN")[1])
    summary = json.loads(lines["SUMMARY"])
    assert abs(plain - summary["top1"]) <= 0.5, (plain, summary["top1"])
    # the command line evaluates the run directory (its model_final.pt) to the same figure; the run
    # names the user's own model factory, which eval loads only when told to
    ev = subprocess.run(
        [sys.executable, "-m", "largebatch", "eval", "run", "--trust-plugins"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert ev.returncode == 0, ev.stderr[-2000:]
    result = json.loads(ev.stdout)
    assert result["top1"] == pytest.approx(summary["top1"], abs=0.25) and result["checkpoint"].endswith(
        "model_final.pt"
    )


def test_config_file_from_a_run_and_from_recipes(trained):
    site, work, env, out, lines = trained
    again = subprocess.run(
        [
            sys.executable,
            "-m",
            "largebatch",
            "train",
            "--config",
            "run/config.json",
            "--nproc",
            "1",
            "--set",
            "train.epochs=1",
            "--out",
            "again",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert again.returncode == 0, again.stderr[-3000:]
    first, second = (json.loads((work / d / "config.json").read_text()) for d in ("run", "again"))
    assert second["train"].pop("epochs") == 1 and first["train"].pop("epochs") == 3
    assert first == second  # everything else carried over from the file
    # the YAML `largebatch recipes NAME` prints reads back as the same config, for every recipe
    proc = python(
        """
        import subprocess, sys
        from largebatch.api import load_config
        from largebatch.recipes import get_recipe, recipe_names
        for name in recipe_names():
            text = subprocess.run([sys.executable, "-m", "largebatch", "recipes", name], capture_output=True,
                                  text=True, check=True).stdout
            open(name + ".yaml", "w").write(text)
            assert load_config(name + ".yaml") == get_recipe(name), name
        print("RECIPES OK", len(recipe_names()))
    """,
        env=env,
        cwd=work,
    )
    assert proc.returncode == 0 and "RECIPES OK" in proc.stdout, proc.stderr[-2000:]


@pytest.mark.parametrize(
    "override, fragment",
    [
        ("model.name=nosuchmodule:net", "cannot import 'nosuchmodule'"),
        ("data.name=userplug:missing", "has no attribute 'missing'"),
    ],
)
def test_plugin_errors_are_one_line_before_workers(installed, override, fragment):
    site, work, env = installed
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "largebatch",
            "train",
            "--nproc",
            "2",
            *sum((["--set", o] for o in OVERRIDES + [override]), []),
            "--out",
            "bad",
        ],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 2 and fragment in proc.stderr, proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert not (work / "bad").exists()


def test_user_model_gets_ghost_bn_and_a_bad_factory_is_named(tmp_path, monkeypatch):
    from largebatch.nn import GhostBatchNorm2d, build_model
    from largebatch.registry import RegistryError

    (tmp_path / "userplug_unit.py").write_text(USER_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    model = build_model("userplug_unit:tiny_net", num_classes=2, in_channels=1, bn_batch_size=8)
    assert isinstance(model[1], GhostBatchNorm2d) and model[1].bn_batch_size == 8
    assert model(torch.zeros(16, 1, 12, 12)).shape == (16, 2)
    with pytest.raises(RegistryError, match="returned a str, not an nn.Module"):
        build_model("userplug_unit:not_a_model", num_classes=2, in_channels=1)
    with pytest.raises(RegistryError, match="cannot import 'no_such_pkg_xyz'"):
        build_model("no_such_pkg_xyz:net", num_classes=2, in_channels=1)


def test_entry_point_names_a_user_model(tmp_path, monkeypatch):
    """A package that declares ``[project.entry-points."largebatch.models"]`` is found by name: an
    installed distribution's metadata (a dist-info folder on sys.path) is what importlib.metadata reads."""
    from largebatch.nn import GhostBatchNorm2d, build_model
    from largebatch.registry import MODEL_GROUP, is_plugin

    (tmp_path / "userplug_ep.py").write_text(USER_MODULE)
    info = tmp_path / "userplug_ep-0.1.dist-info"
    info.mkdir()
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: userplug-ep\nVersion: 0.1\n")
    (info / "entry_points.txt").write_text("[largebatch.models]\ntiny_halves_net = userplug_ep:tiny_net\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert is_plugin("tiny_halves_net", MODEL_GROUP) and not is_plugin("no_such_entry", MODEL_GROUP)
    model = build_model("tiny_halves_net", num_classes=2, in_channels=1, bn_batch_size=4)
    assert isinstance(model[1], GhostBatchNorm2d) and model(torch.zeros(8, 1, 12, 12)).shape == (8, 2)
