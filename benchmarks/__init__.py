"""Benchmarks: what ldmcore's figures are measured with. Each is a module run from the
repository root as ``python -m benchmarks.NAME`` (``--help`` lists its options) and writes
``benchmarks/results/NAME/<variant>.json`` and ``.md``, headed by the machine it ran on.

On the demo (``make bench``, ``make bench-quick``):
  run            the demo's phases: wall and CPU time, peak memory, class fidelity
  auto_choice    precision=auto and threads=auto against the explicit choices
  perf           ldmcore against diffusers on the same weights (UNet, sampling, VAE, training)
  reliability    fuzzed inputs handled cleanly, and SIGKILLs resumed to identical weights
On samplers (``make bench-samplers``):
  sampler_orders measured convergence order of every deterministic sampler (seconds)
  samplers       fidelity against network evaluations on a trained digits run
On the plugins (``make bench-plugins``; hours on 2 cores):
  plugins        every plugin experiment trained and scored
  samplers_tasks, plugin_guidance, attach_plugin, sr_headroom, inpaint_headroom
                 studies on those runs
  latent_vs_pixel  pixels against latents for the same training time (``make bench-fig6``)
  sd_parity      parity with diffusers at full Stable Diffusion size (not CI)
On a CUDA machine: ``benchmarks/gpu/`` (``run_device.sh``).

Shared pieces live in ``benchmarks.support``. Timings are never asserted in tests; they live here.
"""
