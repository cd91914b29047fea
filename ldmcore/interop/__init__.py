"""Interoperability with Stable Diffusion single files and diffusers folders.

``keymaps``  parameter-name maps between ldmcore (CompVis layout) and diffusers / OpenCLIP
``detect``   the architecture of a foreign checkpoint, read from its keys, shapes and configs
``convert``  import into an ldmcore run folder, export back to both layouts, ``from_pretrained``

Numerical parity with diffusers on the same weights is what proves these maps (tests/test_interop.py,
``python -m benchmarks.sd_parity``).
"""
