"""Conformance kit for condition plugins: run it from a plugin's own test suite.

Like scikit-learn's ``check_estimator`` or diffusers' shared tester mixins, it checks the
plugin contract against a plugin, with tiny models, in a few seconds::

    from ldmcore.testing import ConformanceTests, PluginCase

    class TestEdgesConformance(ConformanceTests):          # one pytest test per rule
        case = PluginCase(EdgesEncoder, config={"channels": 2}, cli_values=edge_pngs,
                          plugin=ldm_edges)

or, in one call, ``check_plugin(case)``, which raises ``ConformanceError`` listing every rule the
plugin breaks. Each rule has a name (``RULES``, documented in docs/conformance.md), and every
failure message starts with it: ``plugin 'edges' breaks rule 'null': ...``.

The package: ``case`` (what an author hands the kit), ``kit`` (the tiny backbone and isolated
registries), ``context`` (what the rules of one case share), ``outputs`` (reading and comparing
outputs), ``rules/`` (one module per group of rules, and the ``RULES`` table), ``runner`` (checks
and the pytest mixin).
"""

from ldmcore.testing.case import ConformanceError, PluginCase
from ldmcore.testing.kit import IMAGE_SIZE, builtin_plugin_modules, isolated_registry, kit_config
from ldmcore.testing.rules import RULES
from ldmcore.testing.runner import ConformanceTests, check_plugin, check_rule

__all__ = ["IMAGE_SIZE", "RULES", "ConformanceError", "ConformanceTests", "PluginCase",
           "builtin_plugin_modules", "check_plugin", "check_rule", "isolated_registry", "kit_config"]
