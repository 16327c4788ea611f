# Every target creates .venv on first use: a fresh machine needs nothing but Python 3.10+.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
ARGS   ?=

.PHONY: venv demo test test-fast chaos bench gpu-check scaling-sweep fetch-weights clean-runs

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

demo: $(STAMP)  ## train all 10 digit labels (~2 min budget), score them, write runs/digits-*/report.md
	$(BIN)/wcgan train --config experiments/digits.yaml $(ARGS)

test: $(STAMP)  ## the test suite (real local Ray, CPU only, no network)
	$(BIN)/python -m pytest $(ARGS)

test-fast: $(STAMP)  ## unit tests only (no Ray started), about a minute
	$(BIN)/python -m pytest -m "not e2e" $(ARGS)

KILLS ?= 10
chaos: $(STAMP)  ## a digits run under KILLS label-actor kills, a collector kill and a driver kill; checks nothing was lost
	$(BIN)/python -m orchestrator.chaos --kills $(KILLS) $(ARGS)

bench: $(STAMP)  ## throughput ratio vs a bare loop, start-up latency, placement at 10/100/1000 labels, packing, describe()
	$(BIN)/python bench/throughput.py
	$(BIN)/python bench/placement_sim.py
	$(BIN)/python bench/packing.py
	$(BIN)/python bench/describe_scale.py
	$(BIN)/python bench/scoring.py

.PHONY: recipe-sweep
recipe-sweep: $(STAMP)  ## per-label recipe sweep at the demo's 24 s share, no Ray (18 recipes x 3 labels x 2 seeds, ~30 min on 2 cores)
	$(BIN)/python bench/recipe_sweep.py $(ARGS)

gpu-check: $(STAMP)  ## on a GPU machine (258 s on one H100): devices, actor/bare ratio, 10 labels shared vs packed, bf16 on/off
	$(BIN)/python bench/gpu_check.py $(ARGS)

WORKERS ?= 1,2
STEPS   ?= 200

scaling-sweep: $(STAMP)  ## weak scaling, one Ray job per N (local Ray head unless RAY_ADDRESS): runs/sweeps/<id>/scaling.csv + .png
	$(BIN)/wcgan sweep --config experiments/digits.yaml --workers $(WORKERS) --steps $(STEPS) $(ARGS)

clean-runs:
	rm -rf runs/

# Inception weights for FID/IS/KID (torch-fidelity's InceptionV3, about 95 MB). Needs a network: run it
# on a login node. DEST=file-or-directory (default: the torch hub cache, torch.hub.get_dir()/checkpoints/).
DEST ?=
fetch-weights: $(STAMP)  ## download weights-inception-2015-12-05-6726825d.pth (or DEST=path)
	$(BIN)/python -m metrics.inception fetch $(if $(DEST),--dest $(DEST))
