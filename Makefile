# Set-up and the two everyday jobs. `make run` and `make test` each build the virtual
# environment on first use (PyTorch CPU build pinned by constraints.txt), so a fresh clone
# needs nothing else.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test bench install clean

run: $(STAMP)  ## main job: pull the bundled default model and serve it (OpenAI API + web chat)
	$(BIN)/luodi pull smollm2-135m-instruct
	$(BIN)/luodi serve

test: $(STAMP)  ## the test suite
	$(BIN)/python -m pytest -q

bench: $(STAMP)  ## speed benchmarks against llama.cpp and transformers (JSON in benchmarks/results/)
	$(BIN)/pip install -q -c constraints.txt -e ".[test,bench]"
	$(BIN)/python benchmarks/engine_speed.py

install: $(STAMP)

$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e ".[kb,pg,finetune,corpus,test]"
	touch $(STAMP)

clean:
	rm -rf $(VENV) .cache
