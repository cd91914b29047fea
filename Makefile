# Two commands on a fresh clone: `make demo` and `make test` (each runs `make setup` first).
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
LDM    := $(VENV)/bin/ldm
STAMP  := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export NO_ALBUMENTATIONS_UPDATE := 1

.PHONY: setup demo test bench bench-quick bench-perf bench-samplers bench-plugins bench-fig6 bench-reliability clean

setup: $(STAMP)

# torch==2.13.0 first: on this machine it is the CPU build on local disk. It is pinned here,
# not in pyproject.toml, so users keep the torch build (CPU/CUDA) that fits their machine.
# The example third-party plugin is installed like any plugin package (CI runs its tests too).
EXAMPLE := examples/ldm-plugin-edges

$(STAMP): pyproject.toml Makefile $(EXAMPLE)/pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e '.[test,tensorboard]'
	$(PIP) install -q --no-deps k-diffusion==0.1.1.post1  # the parity tests' reference samplers
	$(PIP) install -q --no-build-isolation -e $(EXAMPLE)
	touch $(STAMP)

demo: setup
	$(LDM) train experiment=demo overwrite=true
	$(LDM) sample run=runs/demo cond.class=[0,1,2,3,4,5,6,7,8,9] n=8 out=runs/demo/samples/final
	$(LDM) eval run=runs/demo samples=runs/demo/samples/final
	@echo "demo results: runs/demo/samples/final/grid.png (one row per class), runs/demo/samples/final/samples.json, runs/demo/eval.json"

test: setup
	$(PY) -m pytest tests
	cd $(EXAMPLE) && $(abspath $(PY)) -m pytest

# run.py: the demo's phases; auto_choice.py: precision/threads=auto against the explicit choices
# on the demo's step; perf.py: ldmcore vs diffusers on the same weights (UNet, 20-step sample,
# VAE decode, training step; fp32, and bf16 where the CPU runs it natively; FLOP/s; memory)
bench: setup
	$(PY) benchmarks/run.py
	$(PY) benchmarks/auto_choice.py
	nice $(PY) benchmarks/perf.py
	$(PY) benchmarks/reliability.py

bench-quick: setup
	$(PY) benchmarks/run.py --quick
	$(PY) benchmarks/auto_choice.py --reps 3
	nice $(PY) benchmarks/perf.py --quick
	$(PY) benchmarks/reliability.py --examples 100 --kills 4 --steps 16

# fuzz cases tried / handled cleanly per input, and 20 SIGKILLs resumed to identical weights
bench-reliability: setup
	$(PY) benchmarks/reliability.py

bench-perf: setup
	nice $(PY) benchmarks/perf.py

# fidelity against network evaluations for every sampler, on the demo run (make demo first)
# every plugin experiment trained and scored, then the studies that use those runs (hours on 2 cores)
bench-plugins: setup
	$(PY) benchmarks/plugins.py
	$(PY) benchmarks/samplers_tasks.py --run runs/bench/shapes_layout
	$(PY) benchmarks/plugin_guidance.py --run runs/bench/shapes_multi --base 1.0 --high 3.0
	$(PY) benchmarks/attach_plugin.py
	$(PY) benchmarks/sr_headroom.py --run runs/bench/photos_sr4x
	$(PY) benchmarks/inpaint_headroom.py --run runs/bench/photos_inpaint

bench-fig6: setup  # pixels vs latents for the same training time (about 1 h: two runs at a time)
	$(PY) benchmarks/latent_vs_pixel.py run digits 4 2 8 1 --budget 480 & \
	$(PY) benchmarks/latent_vs_pixel.py run shapes 4 2 8 1 --budget 480 & wait
	$(PY) benchmarks/latent_vs_pixel.py report

bench-samplers: setup
	$(PY) benchmarks/sampler_orders.py
	$(PY) benchmarks/samplers.py --run runs/demo

clean:
	rm -rf runs .pytest_cache
