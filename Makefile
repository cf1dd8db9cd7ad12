# Set-up and everyday commands. Every install goes through constraints.txt (CPU torch 2.13.0).
PY ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PIP := $(BIN)/pip install -q -c constraints.txt
SAMPLE := serving/samples/astronaut-lr.png

.PHONY: demo test install install-test clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip

install: $(BIN)/python
	$(PIP) -e .

install-test: $(BIN)/python
	$(PIP) -e ".[test]"

# Main job (until the server lands): upscale the bundled sample with the shipped default model.
demo: install
	$(BIN)/srnas info
	$(BIN)/srnas upscale $(SAMPLE) -o upscaled.png
	@echo "result: $(CURDIR)/upscaled.png"

test: install-test
	$(BIN)/python -m pytest -q --durations=10

clean:
	rm -rf $(VENV) runs upscaled.png
