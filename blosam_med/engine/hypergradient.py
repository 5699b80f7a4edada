"""Upper-level gradients of BLO-SAM: the prompt's gradient of the subset-B loss through the lower-level solution.

Notation (DARTS, Liu et al. 2019): ``w`` lower parameters (LoRA + heads), ``a`` the prompt, ``xi`` the virtual
step size. With ``w' = w - xi * grad_w L_A(w, a)``::

    first order:   g = grad_a L_B(w, a)
    second order:  g = grad_a L_B(w', a) - xi * grad2_{a,w} L_A(w, a) @ v,     v = grad_w' L_B(w', a)

where the Hessian-vector product is a central finite difference with ``R = eps / ||v||``::

    grad2_{a,w} L_A(w, a) @ v  ~  (grad_a L_A(w + R v, a) - grad_a L_A(w - R v, a)) / (2 R)

Both functions leave every parameter value unchanged and return gradients for ``model.upper_parameters()``.

Across processes (``torchrun``, each with a shard of the A and B batches) both take ``reduce``, which averages a list
of gradients over the processes in place (:func:`blosam_med.distributed.average_`). Every gradient the formulas use
(``grad_w L_A``, ``v`` and the direct term, ``grad_a L_A(w +- R v)``) is averaged before it is used, so the virtual
step, ``R`` and the result are those of one process holding the whole batch.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from blosam_med.model.blosam import BloSam

__all__ = ["first_order_hypergradient", "second_order_hypergradient", "HYPERGRADIENTS"]

Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
Reduce = Callable[[list], object]


def _local(grads: list) -> list:
    """The default ``reduce``: one process, nothing to average."""
    return grads


def _nothing() -> None:
    """The default ``on_loss``."""


def first_order_hypergradient(
    model: BloSam,
    loss_fn: Loss,
    batch_b: tuple[torch.Tensor, torch.Tensor],
    *,
    reduce: Reduce = _local,
    on_loss: Callable[[], None] = _nothing,
    **_: object,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """Gradient of the B loss with respect to the prompt at the current lower weights.

    ``reduce`` averages the gradients over processes in place (see the module docstring); ``on_loss`` is called once
    the B loss is computed (the trainer fires ``BiLevelEvents.UPPER_FORWARD_COMPLETED`` there).

    Returns:
        (gradients for ``model.upper_parameters()``, the B loss, detached).
    """
    emb_b, y_b = batch_b
    loss_b = loss_fn(model.forward_embeddings(emb_b), y_b)
    on_loss()
    grads = list(torch.autograd.grad(loss_b, model.upper_parameters()))
    reduce(grads)
    return grads, loss_b.detach()


def _set_(params: Sequence[torch.Tensor], values: Sequence[torch.Tensor]) -> None:
    with torch.no_grad():
        for p, v in zip(params, values, strict=True):
            p.copy_(v)


def second_order_hypergradient(
    model: BloSam,
    loss_fn: Loss,
    batch_b: tuple[torch.Tensor, torch.Tensor],
    *,
    batch_a: tuple[torch.Tensor, torch.Tensor],
    xi: float,
    eps: float = 0.01,
    reduce: Reduce = _local,
    on_loss: Callable[[], None] = _nothing,
) -> tuple[list[torch.Tensor], torch.Tensor]:
    """DARTS second-order hypergradient: one virtual SGD step of the lower level on ``batch_a`` with step ``xi``,
    the B loss at the stepped weights, and a finite-difference Hessian-vector product (3 extra forward/backward
    passes, no second derivatives). ``reduce`` averages each gradient over processes before use (module docstring);
    ``on_loss`` is called once the B loss at the stepped weights is computed.

    Returns:
        (gradients for ``model.upper_parameters()``, the B loss at the virtual weights, detached).
    """
    lower, upper = model.lower_parameters(), model.upper_parameters()
    emb_a, y_a = batch_a
    emb_b, y_b = batch_b
    original = [w.detach().clone() for w in lower]

    def loss_a() -> torch.Tensor:
        return loss_fn(model.forward_embeddings(emb_a), y_a)

    try:
        g_a = list(torch.autograd.grad(loss_a(), lower, allow_unused=True))
        reduce(g_a)
        # w' (virtual step)
        _set_(lower, [w - xi * g if g is not None else w for w, g in zip(original, g_a, strict=True)])
        loss_b = loss_fn(model.forward_embeddings(emb_b), y_b)
        on_loss()
        grads = list(torch.autograd.grad(loss_b, lower + upper, allow_unused=True))
        reduce(grads)
        v = [g if g is not None else torch.zeros_like(w) for g, w in zip(grads[: len(lower)], lower, strict=True)]
        direct = [g if g is not None else torch.zeros_like(a) for g, a in zip(grads[len(lower) :], upper, strict=True)]
        norm = torch.sqrt(torch.stack([(vi.double() ** 2).sum() for vi in v]).sum())
        if norm == 0:
            return direct, loss_b.detach()
        r = eps / norm.item()
        _set_(lower, [w + r * vi for w, vi in zip(original, v, strict=True)])
        g_plus = list(torch.autograd.grad(loss_a(), upper))
        _set_(lower, [w - r * vi for w, vi in zip(original, v, strict=True)])
        g_minus = list(torch.autograd.grad(loss_a(), upper))
        reduce(g_plus + g_minus)
    finally:
        _set_(lower, original)
    hyper = [d - xi * (gp - gm) / (2 * r) for d, gp, gm in zip(direct, g_plus, g_minus, strict=True)]
    return hyper, loss_b.detach()


#: The function of each name of :data:`blosam_med.variants.HYPERGRADIENTS`.
HYPERGRADIENTS = {"first_order": first_order_hypergradient, "second_order": second_order_hypergradient}
