# Two commands for a fresh machine: `make train` (install, then train with the defaults) and
# `make test` (install, then run the test suite; CI runs it through .ci/run). Both create .venv when it is
# missing.
PYTHON ?= python3
VENV := .venv
# Offline data for this checkout's tests and runs, when the shared folder sits beside it.
SHARED_DATA := $(abspath ../shared/data)
export VAE_COMPARE_DATA ?= $(if $(wildcard $(SHARED_DATA)/mnist),$(SHARED_DATA))

.PHONY: install train test test-fast bench tune answer control

$(VENV)/installed: pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $@

install: $(VENV)/installed

train: install
	$(VENV)/bin/vae-compare train $(ARGS)

test: install
	$(VENV)/bin/python -m pytest -q

# The in-process tier (posteriors, model, schema, data, estimators, report statistics, pictures); its measured
# time is in the README's Tests section.
test-fast: install
	$(VENV)/bin/python -m pytest -q -m "not slow"

# The speed comparisons, interleaved (docs/speed.md).
bench: install
	$(VENV)/bin/python scripts/bench.py $(ARGS)

# The fair comparison's tuning grid on validation data (scripts/tune.sh; docs/tuning.md).
tune: install
	VAE_COMPARE=$(VENV)/bin/vae-compare scripts/tune.sh $(ARGS)

# The decisive answer (scripts/answer.sh; docs/answer.md), one block of at most ANSWER_MINUTES (115) per call:
# rerun it until it exits 0; each block skips what is done (exit 75: the block's time ran out).
answer: install
	VAE_COMPARE=$(VENV)/bin/vae-compare scripts/answer.sh $(ARGS)

# The positive control (scripts/control.sh, then scripts/control.py; docs/control.md): when does a full covariance
# help? Every family's encoder on frozen MNIST decoders and on the synthetic set's true decoder, and learned.
control: install
	VAE_COMPARE=$(VENV)/bin/vae-compare scripts/control.sh $(ARGS)
