#!/usr/bin/env bash
# The pure-Python packages largebatch needs that the offline GPU machine's image lacks, as wheels for
# its Python (3.12, x86-64 Linux), into one folder (default .whl/, ignored by git) that
# benchmarks/gpu_check.sh installs from with `pip install --no-index --no-deps`; and a copy of the
# Fashion-MNIST IDX files (30 MB) into .fmnist/ (ignored by git) for the main job and the tests. Run it
# where pip reaches PyPI, before the GPU check. The versions are the ones this project's CI installs.
#
#   bash benchmarks/gpu_wheels.sh [FOLDER] [FASHION_MNIST_SOURCE]
#
# omegaconf 2.4 no longer needs the antlr4 runtime (its metadata requires PyYAML only). optuna and its
# database layer (alembic, SQLAlchemy, Mako, colorlog) are for `largebatch sweep --tune` and its tests.
# The image already has torch, torchvision, numpy, PyYAML, tqdm, tensorboard, matplotlib, MarkupSafe,
# typing-extensions, packaging, pytest and hypothesis.
set -euo pipefail
cd "$(dirname "$0")/.."
DEST=${1:-.whl}
mkdir -p "$DEST"
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform manylinux1_x86_64)
python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  "${PLATFORMS[@]}" -d "$DEST" \
  omegaconf==2.4.0 optuna==4.9.0 alembic==1.20.1 sqlalchemy==2.1.9 mako==1.4.3 colorlog==6.12.0
ls -l "$DEST"
SRC=${2:-${LARGEBATCH_FASHION_MNIST:-/usr/share/datasets/fashion-mnist}}
mkdir -p .fmnist && cp "$SRC"/*-ubyte* .fmnist/ && ls -l .fmnist
