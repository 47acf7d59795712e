# `make demo`: a virtualenv, the package, and a small end-to-end run that prints a before/after table.
# `make test`: the test suite (what CI runs).
PYTHON ?= python3
VENV   ?= .venv
# The CPU build of torch; on these machines pip takes it from local disk. Override for a CUDA build, e.g.
#   make TORCH='torch' demo
TORCH  ?= torch==2.13.0
BIN     = $(VENV)/bin

.PHONY: venv demo test clean

$(BIN)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q '$(TORCH)'
	$(BIN)/pip install -q -e '.[test,plot]'
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/pfm demo

test: venv
	$(BIN)/python -m pytest

clean:
	rm -rf $(VENV) build src/*.egg-info .pytest_cache
