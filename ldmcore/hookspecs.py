"""Every hook a plugin package can implement, typed, one docstring each.

A plugin package is an installed distribution that names a module in the ``ldmcore``
entry-point group; that module holds functions decorated with ``ldmcore.hookimpl``.
Built-in plugins under ``plugins/`` register exactly the same way.
"""

from __future__ import annotations

from collections.abc import Callable

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
    (``conditions.<name>``) and on the command line (``cond.<name>=...``). Registering a name
    another package already registered is an error that names both packages. The result of the
    hook itself is ignored.
    """
