# Two commands on a fresh clone: `make demo` and `make test` (each runs `make setup` first).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
LDM    := $(VENV)/bin/ldm
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: setup chromium demo test bench bench-quick bench-perf bench-samplers bench-plugins bench-fig6 bench-reliability clean

setup: $(STAMP)

# torch==2.13.0 first: on this machine it is the CPU build on local disk. It is pinned here,
# not in pyproject.toml, so users keep the torch build (CPU/CUDA) that fits their machine.
# The example third-party plugin is installed like any plugin package (CI runs its tests too).
EXAMPLE := examples/ldm-plugin-edges

$(STAMP): pyproject.toml Makefile $(EXAMPLE)/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test,serve,tensorboard]'
	$(PIP) install -q --no-deps k-diffusion==0.1.1.post1  # the parity tests' reference samplers
	$(PIP) install -q --no-build-isolation -e $(EXAMPLE)
	@$(MAKE) --no-print-directory chromium
	touch $(STAMP)

# ldm serve's browser tests drive Debian's chromium; as root it is installed here, elsewhere the
# tests say how to install it and skip
chromium:
	@if ! command -v chromium >/dev/null || ! command -v chromedriver >/dev/null; then \
	  if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null; then \
	    apt-get install -y -q chromium chromium-driver >/dev/null || \
	    (apt-get update -q >/dev/null && apt-get install -y -q chromium chromium-driver >/dev/null) || \
	    echo "chromium could not be installed: the browser tests of ldm serve will be skipped"; \
	  else echo "no chromium: the browser tests of ldm serve will be skipped (apt-get install chromium chromium-driver)"; fi; \
	fi

demo: setup
	$(LDM) train experiment=demo overwrite=true
	$(LDM) sample run=runs/demo cond.class=[0,1,2,3,4,5,6,7,8,9] n=8 out=runs/demo/samples/final
	$(LDM) eval run=runs/demo samples=runs/demo/samples/final
	@echo "demo results: runs/demo/samples/final/grid.png (one row per class), runs/demo/samples/final/samples.json, runs/demo/eval.json"

test: setup
	$(PY) -m pytest tests
	cd $(EXAMPLE) && $(abspath $(PY)) -m pytest

# Benchmarks run from the repository root as modules of the `benchmarks` package and write
# benchmarks/results/<benchmark>/<variant>.{json,md}. run: the demo's phases; auto_choice:
# precision/threads=auto against the explicit choices on the demo's step; perf: ldmcore vs
# diffusers on the same weights (UNet, 20-step sample, VAE decode, training step; fp32, and bf16
# where the CPU runs it natively; FLOP/s; memory); reliability: fuzzing and SIGKILL resumes
bench: setup
	$(PY) -m benchmarks.run
	$(PY) -m benchmarks.auto_choice
	nice $(PY) -m benchmarks.perf
	$(PY) -m benchmarks.reliability

# smoke sizes, written as each benchmark's `quick` variant (the full figures are kept)
bench-quick: setup
	$(PY) -m benchmarks.run --quick
	$(PY) -m benchmarks.auto_choice --reps 3 --variant quick
	nice $(PY) -m benchmarks.perf --quick
	$(PY) -m benchmarks.reliability --examples 100 --kills 4 --steps 16 --variant quick

# fuzz cases tried / handled cleanly per input, and 20 SIGKILLs resumed to identical weights
bench-reliability: setup
	$(PY) -m benchmarks.reliability

bench-perf: setup
	nice $(PY) -m benchmarks.perf

# every plugin experiment trained and scored, then the studies that use those runs (hours on 2 cores)
bench-plugins: setup
	$(PY) -m benchmarks.plugins
	$(PY) -m benchmarks.samplers_tasks --run runs/bench/shapes_layout
	$(PY) -m benchmarks.plugin_guidance --run runs/bench/shapes_multi --base 1.0 --high 3.0
	$(PY) -m benchmarks.attach_plugin
	$(PY) -m benchmarks.sr_headroom --run runs/bench/photos_sr4x
	$(PY) -m benchmarks.inpaint_headroom --run runs/bench/photos_inpaint

bench-fig6: setup  # pixels vs latents for the same training time (about 1 h: two runs at a time)
	$(PY) -m benchmarks.latent_vs_pixel run digits 4 2 8 1 --budget 480 & \
	$(PY) -m benchmarks.latent_vs_pixel run shapes 4 2 8 1 --budget 480 & wait
	$(PY) -m benchmarks.latent_vs_pixel report

# convergence orders on Gaussian data (seconds), then fidelity against network evaluations for
# every sampler on the demo run (make demo first)
bench-samplers: setup
	$(PY) -m benchmarks.sampler_orders
	$(PY) -m benchmarks.samplers --run runs/demo

clean:
	rm -rf runs .pytest_cache
