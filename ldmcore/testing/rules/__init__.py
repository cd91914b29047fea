"""``RULES``: every conformance rule by name, in the order the kit checks them. Each has a
section in docs/conformance.md (a meta-test checks that), and ``ConformanceTests`` turns each
into one pytest test."""

from __future__ import annotations

from collections.abc import Callable

from ldmcore.testing.context import Context
from ldmcore.testing.rules.declarations import (rule_declaration, rule_forward, rule_key_padding_mask,
                                                rule_output_spec, rule_registration)
from ldmcore.testing.rules.determinism import (rule_base, rule_determinism, rule_loss_weight,
                                                rule_save_load)
from ldmcore.testing.rules.inserted import (rule_gate, rule_layers_save_load, rule_owned_layers,
                                            rule_removal, rule_zero_effect)
from ldmcore.testing.rules.null import rule_dropout, rule_null
from ldmcore.testing.rules.user_input import rule_parse, rule_widget
from ldmcore.testing.rules.residual import (rule_residual_ownership, rule_residual_removal,
                                            rule_residual_save_load, rule_residual_zero_init)
from ldmcore.testing.rules.training import rule_gradients, rule_train_sample

RULES: dict[str, Callable[[Context], None]] = {
    "declaration": rule_declaration,
    "output-spec": rule_output_spec,
    "forward": rule_forward,
    "key-padding-mask": rule_key_padding_mask,
    "null": rule_null,
    "dropout": rule_dropout,
    "determinism": rule_determinism,
    "base": rule_base,
    "loss-weight": rule_loss_weight,
    "save-load": rule_save_load,
    "parse": rule_parse,
    "widget": rule_widget,
    "gradients": rule_gradients,
    "train-sample": rule_train_sample,
    "registration": rule_registration,
    "zero-effect": rule_zero_effect,
    "gate": rule_gate,
    "owned-layers": rule_owned_layers,
    "removal": rule_removal,
    "layers-save-load": rule_layers_save_load,
    "residual-zero-init": rule_residual_zero_init,
    "residual-ownership": rule_residual_ownership,
    "residual-removal": rule_residual_removal,
    "residual-save-load": rule_residual_save_load,
}
