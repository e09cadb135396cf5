# A fresh machine in two commands: `make demo` runs the offline demo, `make test` the test suite.
# Each sets up first: .venv when it is missing, torch pinned before the requirements (so the CPU wheel is taken
# where one is offered; an open range would pull a multi-GB CUDA build), requirements.txt again whenever it
# changes, and bubblewrap when it is missing. A second run installs nothing.
#
#   make demo ARGS="--resume auto"            flags go on to scope.py (or to pytest, for make test)
#   make test ARGS="-k loss --durations=25"
#   make demo TORCH="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128"   another torch build
#
# Managing your own environment instead: the plain commands are in README.md. `rm -rf .venv` starts afresh.

PYTHON ?= python3
TORCH ?= torch==2.13.0
ARGS ?=
VENV := .venv

.PHONY: demo test setup sandbox

demo: setup
	$(VENV)/bin/python scope.py --config configs/toy.yaml $(ARGS)

test: setup
	$(VENV)/bin/python -m pytest -q tests $(ARGS)

setup: sandbox $(VENV)/requirements.stamp

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/torch.stamp: | $(VENV)/bin/python
	$(VENV)/bin/pip install --quiet $(TORCH)
	touch $@

$(VENV)/requirements.stamp: requirements.txt $(VENV)/torch.stamp
	$(VENV)/bin/pip install --quiet -r requirements.txt
	touch $@

# The code grader runs untrusted programs inside bubblewrap's sandbox (`bwrap`, Debian's package bubblewrap).
sandbox:
	@command -v bwrap >/dev/null || { \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get update -qq && apt-get install -y -qq bubblewrap; \
	  else \
	    echo "bwrap is missing: the code grader's sandbox needs it. Install bubblewrap" \
	         "(Debian/Ubuntu: sudo apt-get install bubblewrap; Fedora: sudo dnf install bubblewrap)," \
	         "then run make again." >&2; \
	    exit 1; \
	  fi; }
