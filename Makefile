# The two commands of the README. Both create .venv at the repo root when it is missing (and
# refresh it when pyproject.toml changes).
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
STAMP := $(VENV)/.installed

.PHONY: main test test-fast bench dashboard

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[dev]' --config-settings editable_mode=compat  # checkout on sys.path: Hydra finds hydra_plugins
	touch $(STAMP)

main: $(STAMP)
	$(VENV)/bin/python launch.py experiments=ghm_vs_focal

# Two pytest-xdist workers: most of the suite waits on processes it starts (Ray, MLflow, Hydra apps, the compose
# stack), so two at a time fill the 2 cores (four oversubscribe them: slower, docs/benchmarks.md); tests/conftest.py
# keeps on one worker what must not run at once.
test: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -n 2 --dist loadgroup

# The edit-test loop: the unit tier, without the tests marked slow, cluster, browser or docker (pyproject.toml).
test-fast: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/python -m pytest -m "not slow and not cluster and not browser and not docker"

bench: $(STAMP)
	$(VENV)/bin/python benchmarks/bench_losses.py
	$(VENV)/bin/python benchmarks/bench_training.py

# The comparison dashboard of the latest sweep of an experiment (EXPERIMENT=ghm_vs_focal by default).
EXPERIMENT ?= ghm_vs_focal
dashboard: $(STAMP)
	$(VENV)/bin/python -m ghm.dashboard --experiment $(EXPERIMENT)
