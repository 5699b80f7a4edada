from __future__ import annotations

import torch
from monai.losses import DiceCELoss
from torch.func import functional_call

from blosam_med.engine import first_order_hypergradient, second_order_hypergradient
from blosam_med.model import BloSam


def _setup(tiny_backbone):
    model = BloSam(tiny_backbone).train()
    with torch.no_grad():  # move away from LoRA's zero init so every term is non-trivial
        for p in model.lower_parameters():
            p.add_(0.05 * torch.randn_like(p))
    loss = DiceCELoss(sigmoid=True, lambda_ce=0.2, lambda_dice=0.8)
    emb = lambda: torch.randn(2, *tiny_backbone.embedding_shape)
    y = lambda: (torch.rand(2, 1, 64, 64) > 0.6).float()
    return model, loss, (emb(), y()), (emb(), y())


def _exact_hypergradient(model, loss_fn, batch_a, batch_b, xi):
    """Autograd through one unrolled SGD step of the lower level (second derivatives, no approximation)."""
    names = [n for n, _ in model.named_lower_parameters()]
    lower = model.lower_parameters()
    g = torch.autograd.grad(
        loss_fn(model.forward_embeddings(batch_a[0]), batch_a[1]),
        lower,
        create_graph=True,
        allow_unused=True,
        materialize_grads=True,
    )
    unrolled = {n: w - xi * gi for n, w, gi in zip(names, lower, g, strict=True)}

    class Decode(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, emb):
            return self.m.forward_embeddings(emb)

    wrapper = Decode(model)
    out = functional_call(wrapper, {f"m.{n}": t for n, t in unrolled.items()}, (batch_b[0],), strict=False)
    return torch.autograd.grad(loss_fn(out, batch_b[1]), model.upper_parameters())


def _cos(a, b):
    a, b = torch.cat([t.flatten() for t in a]), torch.cat([t.flatten() for t in b])
    return torch.nn.functional.cosine_similarity(a.double(), b.double(), dim=0).item()


def test_second_order_matches_exact(tiny_backbone):
    model, loss, batch_a, batch_b = _setup(tiny_backbone)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    approx, _ = second_order_hypergradient(model, loss, batch_b, batch_a=batch_a, xi=0.5)
    after = dict(model.named_parameters())
    assert all(torch.equal(before[n], after[n]) for n in before)  # parameters restored exactly
    exact = _exact_hypergradient(model, loss, batch_a, batch_b, xi=0.5)
    assert _cos(approx, exact) >= 0.99
    first, _ = first_order_hypergradient(model, loss, batch_b)
    # the second-order correction is not negligible here, so the test can tell the two apart
    assert _cos(first, exact) < _cos(approx, exact)


def test_first_order_is_direct_gradient(tiny_backbone):
    model, loss, _, batch_b = _setup(tiny_backbone)
    grads, loss_b = first_order_hypergradient(model, loss, batch_b)
    model.zero_grad()
    direct = loss(model.forward_embeddings(batch_b[0]), batch_b[1])
    direct.backward()
    assert torch.allclose(loss_b, direct.detach())
    assert torch.allclose(grads[0], model.prompt.grad, atol=1e-7)
