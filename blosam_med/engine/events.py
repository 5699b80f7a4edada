"""Events of a bi-level iteration, registered on the trainer as MONAI's ``AdversarialTrainer`` registers its own."""

from __future__ import annotations

from ignite.engine import EventEnum

__all__ = ["BiLevelEvents"]


class BiLevelEvents(EventEnum):
    """Fired inside each :class:`~blosam_med.engine.BiLevelTrainer` iteration, in this order.

    ``LOWER_*``: the step on a subset-A batch (the joint step when training single-level), after the loss is
    computed and after its gradients are ready (averaged over processes when distributed). ``UPPER_*``: the
    hypergradient step on a subset-B batch (bi-level only), after the B loss and after the prompt's hypergradient.
    ``IterationEvents.MODEL_COMPLETED`` follows, as in every MONAI trainer.
    """

    LOWER_FORWARD_COMPLETED = "lower_forward_completed"
    LOWER_BACKWARD_COMPLETED = "lower_backward_completed"
    UPPER_FORWARD_COMPLETED = "upper_forward_completed"
    UPPER_BACKWARD_COMPLETED = "upper_backward_completed"
