"""The named training variants: methods, hypergradients and A/B roles, each a name in one registry.

The CLI offers these names as choices, the bundle builds a :class:`TrainingVariant` from its ``method``,
``hypergradient`` and ``roles`` ids, and a study config is checked against them when it is loaded, so a
misspelt name fails at once with the list of valid ones instead of silently training another variant. A leaf
module (imports nothing of ours), cheap enough for the CLI's parser.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = [
    "METHODS",
    "HYPERGRADIENTS",
    "ROLES",
    "PROMPT_INITS",
    "ENCODER_TAILS",
    "FROZEN_ENCODER",
    "REGISTRIES",
    "TrainingVariant",
    "check_name",
    "check_variant_options",
]

#: Training methods: ``blosam`` (bi-level: subset A trains LoRA and the decoder heads, subset B the prompt) and
#: ``single`` (single-level baseline: every trained parameter on all shots, one joint step per batch).
METHODS: Mapping[str, str] = {
    "blosam": "bi-level: A trains LoRA and the decoder heads, B the prompt",
    "single": "single-level baseline: all trained parameters on all shots",
}

#: How the shots serve the two levels: ``fixed`` (A trains the adapter, B the prompt, as in the paper) or
#: ``alternate`` (A and B swap roles every iteration, so every shot trains both levels, never in the same step).
ROLES: Mapping[str, str] = {
    "fixed": "A trains the adapter, B the prompt",
    "alternate": "A and B swap roles every iteration",
}

#: Hypergradients of the upper level (functions in :data:`blosam_med.engine.hypergradient.HYPERGRADIENTS`).
HYPERGRADIENTS: Mapping[str, str] = {
    "first_order": "gradient of the B loss at the current lower parameters",
    "second_order": "DARTS: through one virtual lower step, finite-difference Hessian-vector product",
}

#: Initial prompts of the upper level (``BloSam(prompt_init=...)``).
PROMPT_INITS: Mapping[str, str] = {
    "no_mask": "the dense no-mask embedding only (the paper)",
    "box": "also two sparse tokens of a whole-frame box, learned",
}

#: Encoder-tail variants (issue 40, docs/encoder_tail.md): the bundle's ``encoder_tail.yaml`` merged after
#: ``train.yaml`` with these overrides (``blosam train --encoder-tail``, a study method's ``encoder_tail``).
ENCODER_TAILS: Mapping[str, Mapping[str, Any]] = {
    "neck": {"tail_cut": "neck", "tail_neck": "full", "tail_stage_lora": False},
    "stage": {"tail_cut": "last_stage", "tail_neck": "full", "tail_stage_lora": True},
}

#: The name that asks for the frozen encoder where a task preset's ``encoder_tail`` would adapt its tail
#: (``blosam train --encoder-tail none``, a study method's ``encoder_tail: none``).
FROZEN_ENCODER = "none"

#: Registry of each variant option, by the bundle id that selects it.
REGISTRIES: Mapping[str, Mapping[str, Any]] = {
    "method": METHODS,
    "hypergradient": HYPERGRADIENTS,
    "roles": ROLES,
    "prompt_init": PROMPT_INITS,
}


def check_name(option: str, name: Any, where: str = "") -> str:
    """``name`` if it is registered for ``option`` (``method``, ``hypergradient``, ``roles``), else ValueError
    naming the option, the value and the valid names (``where`` prefixes the message: a file and key)."""
    registry = REGISTRIES[option]
    if name not in registry:
        raise ValueError(f"{where}{option} {name!r} is not one of: {', '.join(registry)}")
    return str(name)


def check_variant_options(options: Mapping[str, Any], where: str = "") -> None:
    """Check every registered option (``method``, ``hypergradient``, ``roles``) present in ``options``."""
    for option in REGISTRIES:
        if option in options:
            check_name(option, options[option], where)


@dataclass(frozen=True)
class TrainingVariant:
    """One training variant, its names checked on construction.

    Args:
        method: a name of :data:`METHODS`.
        hypergradient: a name of :data:`HYPERGRADIENTS` (bi-level only).
        roles: a name of :data:`ROLES` (bi-level only).
    """

    method: str
    hypergradient: str
    roles: str

    def __post_init__(self) -> None:
        for option in ("method", "hypergradient", "roles"):
            check_name(option, getattr(self, option))

    @property
    def bilevel(self) -> bool:
        """Whether the shots are split into subsets A and B (BLO-SAM) or all train one level."""
        return self.method == "blosam"

    @property
    def tag(self) -> str:
        """The variant in run names: ``blosam-first_order``, ``blosam-second_order-alternate``, ``single``."""
        if not self.bilevel:
            return self.method
        return f"blosam-{self.hypergradient}" + ("" if self.roles == "fixed" else f"-{self.roles}")
