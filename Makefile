# The two promises: `make demo` and `make test` work on a fresh machine.
VENV   ?= .venv
PY     := $(VENV)/bin/python
# torch first, with an exact pin: an unpinned torch pulls a multi-GB build from the registry.
# 2.14.1 is the build that has a working torchvision beside it (needed by open_clip-based rewards).
TORCH  := torch==2.14.1 torchvision==0.29.1
STAMP  := $(VENV)/.installed

.PHONY: install demo test pretrain clean

install: $(STAMP)

$(STAMP): pyproject.toml Makefile
	python3 -m venv $(VENV)
	$(VENV)/bin/pip install --quiet $(TORCH)
	$(VENV)/bin/pip install --quiet -e '.[test]'
	touch $(STAMP)

demo: install
	$(VENV)/bin/cogrpo train --config configs/smoke-cpu.yaml

test: install
	$(PY) -m pytest -q

pretrain: install
	$(VENV)/bin/cogrpo pretrain --config configs/pretrain-tiny.yaml

clean:
	rm -rf $(VENV) *.egg-info
