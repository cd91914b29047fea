"""What the benchmarks share, one concept per module.

* ``results``: each benchmark's results folder, the machine and load line, Markdown tables.
* ``timing``: variants timed alternating (medians on the wall and CPU clocks), ratios, peak
  memory of one call, a timed ``ldm`` command.
* ``runs``: trained runs loaded through ``ldmcore.runfolder``, with a clear error when missing.
* ``anchor``: the performance anchor, one SD-like UNet and VAE with the same weights in
  diffusers and ldmcore (the CPU and CUDA comparisons, and ``tests/test_execution.py``).
* ``demo_step``: the demo's training step as a callable to time.
* ``sampler_plans``: every shipped sampler as a sampling plan, and the NFE budgets.
* ``headroom``: a trained run's mean estimate and the PSNR table of the headroom studies.
"""
