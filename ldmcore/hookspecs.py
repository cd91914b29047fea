"""Every hook a plugin package can implement, typed, one docstring each.

A plugin package is an installed distribution that names a module in the ``ldmcore``
entry-point group; that module holds functions decorated with ``ldmcore.hookimpl``.
Built-in plugins under ``plugins/`` register exactly the same way.

Each hook receives a ``register`` callback (as llm and tox do), so one package may register
several things; what the hook itself returns is ignored. The reference, with a runnable example
per hook, is ``docs/hooks.md``; a meta-test fails when a hook here has no section there, or no
test.
"""

from __future__ import annotations

from collections.abc import Callable
from os import PathLike

import pluggy

PROJECT = "ldmcore"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def register_conditions(register: Callable[[type], None]) -> None:
    """Register condition-encoder classes.

    When: once, the first time the registry is asked for plugins (``ldm plugins``, building a
    model from config). Call ``register(EncoderClass)`` for each ``ConditionEncoder`` subclass
    the package provides; the class's ``name`` is the key users write in configs
    (``conditions.<name>``) and on the command line (``cond.<name>=...``). A name another
    package also registers is a clash: neither class is used under it, and a run that asks for
    it stops with an error naming both packages (other runs are unaffected). Anything the hook
    raises (``SystemExit`` included) makes the package broken, keeping none of what it
    registered. The result of the hook itself is ignored.
    """


@hookspec
def register_config_dirs(register: Callable[[str | PathLike[str]], None]) -> None:
    """Register folders of Hydra config groups that the package ships.

    When: with ``register_conditions``, when the registry loads the package. Call
    ``register(folder)`` with a folder laid out like the host's ``conf/`` tree (for example
    ``conf/condition/edges.yaml`` and ``conf/experiment/shapes_edges.yaml``); every composition
    (``ldm train experiment=...``) then searches it after the host's own tree, so users select
    ``condition=[edges]`` or ``experiment=shapes_edges`` without copying files. A file whose
    group and name another package (or the host) already ships is an error naming both. A
    folder that does not exist makes the package broken (listed by ``ldm plugins``, not loaded).
    The result of the hook itself is ignored.
    """


@hookspec
def register_samplers(register: Callable[..., None]) -> None:
    """Register sampling functions.

    When: once, with ``register_conditions``, the first time the registry is asked for plugins
    (the built-in samplers in ``ldmcore.diffusion.samplers`` register through this same hook).
    Call ``register(fn, name=..., evals_per_step=1)`` for each sampler. ``fn`` follows
    k-diffusion's contract, ``fn(model, x, sigmas, *, extra_args=None, callback=None, **knobs)``
    with ``model(x, sigma, **extra_args) -> denoised``; it may take ``generator=`` (a
    ``torch.Generator``) or k-diffusion's ``noise_sampler=`` and ``disable=``, which ldmcore
    fills in. Its other keyword parameters with defaults are its knobs (``eta``, ``s_noise``,
    ...), set as ``sampler.eta`` / ``sampler.options.<knob>`` in config and ``eta=``,
    ``s_noise=`` or ``option.<knob>=`` on ``ldm sample``; values are checked against the
    defaults' types and against ranges: shared ones (eta in [0, 1], s_noise >= 0, order >= 1)
    or the function's own, declared with ``ldmcore.diffusion.steps.knob_bounds``.
    ``name`` defaults to the function's name without ``sample_``; ``evals_per_step`` is how many
    network evaluations one step costs (2 for Heun-type methods), used to compare samplers at
    equal cost. A name another package also registers is a clash, an error naming both for
    the runs that use it (as for ``register_conditions``).
    """


@hookspec
def register_metrics(register: Callable[..., None]) -> None:
    """Register fidelity metrics that ``ldm eval`` reports for a condition plugin.

    When: with ``register_conditions``, when the registry loads the package. Call
    ``register(condition, score, *, name=None, baseline=None, datasets=None, averages=False,
    reads_data=False, against_null=False)``. ``ldm eval`` runs every metric registered for each condition a run
    enables: ``score(images, value, batch) -> dict`` gets the generated images (B, C, H, W) in
    [-1, 1], the condition's resolved value for them, and the data items they were conditioned
    on (``batch``; empty when ``ldm eval`` scores a folder of ``ldm sample`` output), and returns
    the report's entries (JSON values, keys named after the metric). ``baseline(value, batch)``,
    optional, returns what the metric reads without a model (e.g. bicubic upsampling).
    ``datasets`` names the datasets on which the metric means something (None: any);
    ``averages=True`` also reports it for the mean of K samples (``average=K``); a metric with
    ``reads_data=True`` needs the data items, not only the condition value; with
    ``against_null=True`` ``ldm eval`` also samples the same noise with this condition's guidance
    scale at 0 (its null: the model without it, the other conditions guided as before) and
    reports the metric's entries for those samples too, each key with ``_null`` appended. The
    result of the hook itself is ignored.
    """


@hookspec
def register_datasets(register: Callable[..., None]) -> None:
    """Register datasets, selectable as ``data=NAME`` (``data.name=NAME``).

    When: with ``register_conditions``, when the registry loads the package (ldmcore's own
    datasets register through this same hook). Call ``register(name, build, *, held_out=None)``.
    ``build(**options)`` returns a ``torch.utils.data.Dataset`` of dict items (``image`` in
    [-1, 1] plus the keys condition plugins read); ``options`` are the ``data`` config section's
    keys (``image_size``, ``channels``, ``path``, ...; ignore those you do not use).
    ``held_out(**options)``, optional, returns items the model never trained on: ``ldm eval``
    samples from their conditions; without it, ``ldm eval`` scores a folder of ``ldm sample``
    output. Registering a name another package registered is an error naming both. The result
    of the hook itself is ignored.
    """


@hookspec
def register_loggers(register: Callable[..., None]) -> None:
    """Register experiment loggers, selectable as ``trainer.loggers=[NAME, ...]``.

    When: with ``register_conditions``, when the registry loads the package (the built-in
    ``tensorboard`` logger registers through this same hook, from
    ``ldmcore.loggers.tensorboard``). Call ``register(name, open, *, missing=None)``.
    ``open(run_dir, config)`` is called once per run when training starts, on the main process
    only, with the run folder (a ``Path``) and the resolved config (a plain dict); it returns a
    ``ldmcore.loggers.Logger``, whose methods then receive every ``metrics.jsonl`` record as
    scalars (``diffusion/loss`` at its step), every sample grid as an image, the config as
    hyper-parameters with the final figures at the end, and ``close()`` however the run ends.
    ``missing()``, optional, returns None when the logger can run here, else a sentence saying
    what to install: it is asked when the config is loaded, so a run that names the logger
    stops with that sentence before anything is written. A logger whose method raises while a
    run trains is dropped with a warning; the run goes on (``metrics.jsonl`` keeps everything).
    A name another package also registers is a clash, an error naming both for the runs that
    use it. The result of the hook itself is ignored.
    """
