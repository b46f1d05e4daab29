# pcseg: `make train` and `make test` are the two commands. Both (re)build .venv when it is
# missing or pyproject.toml changed (a stamp file records the last successful install).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.pcseg-installed
DATA_ROOT ?= data/synthetic_kitti

.PHONY: train test test-fast data lint format clean-data help

help:
	@echo "make train   - set up .venv, build the embedded dataset if absent, train (ARGS=overrides)"
	@echo "make test    - set up .venv, run the test suite"
	@echo "make data    - build the embedded synthetic dataset into $(DATA_ROOT)"
	@echo "make lint    - ruff check + format check"

$(STAMP): pyproject.toml scripts/bootstrap.sh
	PYTHON=$(PYTHON) VENV=$(VENV) bash scripts/bootstrap.sh
	@touch $(STAMP)

# Builds the embedded dataset on first use, trains, prints the best checkpoint's IoU table.
# Extra Hydra overrides: make train ARGS="trainer.max_epochs=2 model.net.width=16"
train: $(STAMP)
	$(PY) train.py $(ARGS)

data: $(STAMP)
	$(PY) scripts/make_synthetic_dataset.py --root $(DATA_ROOT)

test: $(STAMP)
	$(PY) -m pytest -q

lint: $(STAMP)
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .
	$(VENV)/bin/hadolint Dockerfile

format: $(STAMP)
	$(PY) -m ruff format .
	$(PY) -m ruff check --fix .

clean-data:
	rm -rf $(DATA_ROOT)
