# Set-up and the two everyday jobs. `make run` and `make test` each build the virtual
# environment on first use (PyTorch CPU build pinned by constraints.txt), so a fresh clone
# needs nothing else. Each installs only the extras it needs, remembered by one stamp per set:
# serving is the core plus the knowledge base (`kb`) and constrained decoding (`structured`);
# the tests need every extra.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
SERVE_EXTRAS := kb,structured
TEST_EXTRAS := kb,structured,pg,finetune,corpus,ray,schedule,test
SERVE_STAMP := $(VENV)/.installed-serve
STAMP := $(VENV)/.installed

.PHONY: run test bench install clean

run: $(SERVE_STAMP)  ## main job: pull the bundled default model and serve it (OpenAI API + web chat)
	$(BIN)/luodi pull smollm2-135m-instruct
	$(BIN)/luodi serve

test: $(STAMP)  ## the layer contracts (import-linter), then the test suite
	$(BIN)/lint-imports --no-cache
	$(BIN)/python -m pytest -q

bench: $(STAMP)  ## speed benchmarks against llama.cpp and transformers (JSON in benchmarks/results/)
	$(BIN)/pip install -q -c constraints.txt -e ".[test,bench]"
	$(BIN)/python benchmarks/engine_speed.py

install: $(STAMP)

$(SERVE_STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e ".[$(SERVE_EXTRAS)]"
	touch $(SERVE_STAMP)

# Every extra (a superset of serving's, so it stamps that set too).
$(STAMP): pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q -c constraints.txt -e ".[$(TEST_EXTRAS)]"
	touch $(STAMP) $(SERVE_STAMP)

clean:
	rm -rf $(VENV) .cache
