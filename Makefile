# Quick start: `make demo` then `make test`. Both create .venv and install the project when
# pyproject.toml changed since the last install (a stamp keyed on its hash), else skip in a second.

# The first supported interpreter found (torch, ray and deepspeed wheels exist for 3.10-3.12).
PYTHON ?= $(firstword $(foreach v,3.11 3.12 3.10,$(shell command -v python$(v) 2>/dev/null)))
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-16)
# DeepSpeed compiles its CPU ops on first use; keep them between runs.
export TORCH_EXTENSIONS_DIR ?= $(HOME)/.cache/atflrec/torch_extensions
export RAY_TRAIN_V2_ENABLED := 1
export RAY_USAGE_STATS_ENABLED := 0

.PHONY: install demo test test-fast lint clean

install: $(STAMP)

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || test -n "$(PYTHON)" || { echo "atflrec needs Python 3.10, 3.11 or 3.12 (python3.X on PATH, or make PYTHON=/path/to/python); none was found" >&2; exit 1; }
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	@echo "installing atflrec and its dependencies into $(VENV) (minutes the first time; pip's output: $(VENV)/install.log)"
	@{ $(BIN)/python -m pip install --upgrade pip && $(BIN)/python -m pip install -e '.[dev]'; } > $(VENV)/install.log 2>&1 \
		|| { tail -n 25 $(VENV)/install.log >&2; echo "install failed: the whole log is $(VENV)/install.log" >&2; exit 1; }
	@rm -f $(VENV)/.installed-*
	@touch $@

demo: $(STAMP)
	$(BIN)/atflrec demo

test: $(STAMP)
	$(BIN)/python -m pytest

# Everything but the slower tests: the real base model, a separate Ray head, a built wheel.
test-fast: $(STAMP)
	$(BIN)/python -m pytest -m "not integration"

lint: $(STAMP)
	$(BIN)/ruff check atflrec tests bench

clean:
	rm -rf runs .pytest_cache
