# Set-up and the two commands of the README. Idempotent: a second run reuses .venv.
#   make demo   install what the main job needs, make sure Fashion-MNIST is present, run the main job
#   make test   install that and the test tools, make sure Fashion-MNIST is present, run the test suite
# Both install the exact torch / torchvision pair of constraints.txt.
# DATA_ROOT=/path/to/fashion-mnist points both at your own copy of the four IDX files.

PYTHON ?= python3
VENV ?= .venv
DATA_ROOT ?=
FMNIST_DEFAULT := /usr/share/datasets/fashion-mnist
STAMP := $(VENV)/.installed-stamp
TEST_STAMP := $(VENV)/.installed-test-stamp
PIP := $(VENV)/bin/python -m pip install --quiet --disable-pip-version-check -c constraints.txt

export LARGEBATCH_FASHION_MNIST := $(DATA_ROOT)

.PHONY: install install-test data demo test clean

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# what the main job needs (torch, torchvision and the package's own dependencies)
$(STAMP): pyproject.toml constraints.txt | $(VENV)/bin/python
	$(PIP) -e .
	touch $(STAMP)

# and the test tools (pytest, hypothesis, ruff, import-linter, DALI, fsspec)
$(TEST_STAMP): $(STAMP)
	$(PIP) -e '.[test]'
	touch $(TEST_STAMP)

install: $(STAMP)

install-test: $(TEST_STAMP)

data:
	@if [ -n "$(DATA_ROOT)" ]; then \
	  ls $(DATA_ROOT)/train-images-idx3-ubyte* >/dev/null 2>&1 || { echo "DATA_ROOT=$(DATA_ROOT) lacks the Fashion-MNIST IDX files (train-images-idx3-ubyte[.gz], ...)"; exit 1; }; \
	elif ls $(FMNIST_DEFAULT)/train-images-idx3-ubyte* >/dev/null 2>&1; then :; \
	elif [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	  DEBIAN_FRONTEND=noninteractive apt-get install -y dataset-fashion-mnist >/dev/null \
	  || { apt-get update >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y dataset-fashion-mnist >/dev/null; }; \
	else \
	  echo "Fashion-MNIST is not in $(FMNIST_DEFAULT). On Debian/Ubuntu as root: apt-get install -y dataset-fashion-mnist."; \
	  echo "Elsewhere: download train-images-idx3-ubyte.gz, train-labels-idx1-ubyte.gz, t10k-images-idx3-ubyte.gz and"; \
	  echo "t10k-labels-idx1-ubyte.gz from https://github.com/zalandoresearch/fashion-mnist (data/fashion/) into a folder,"; \
	  echo "then run: make demo DATA_ROOT=/that/folder  (or largebatch train --set data.root=/that/folder)"; \
	  exit 1; \
	fi

demo: install data
	$(VENV)/bin/largebatch train

test: install-test data
	$(VENV)/bin/python -m pytest -q

clean:
	rm -rf $(VENV) runs .pytest_cache
