"""The delta rule: TTT-Linear's inner loop in closed form, one gradient step of a reconstruction loss.

Per mini-batch of the document's tokens, each fast layer sees keys k_t (its selective features at the token
that predicts the next one) and a value v_t (the direction in the residual stream that raises the next
token's logit: its output embedding scaled by the final norm's weight, unit length, times `value_scale` ×
the norm of the residual stream there, shared among the fast layers). The reconstruction loss

    ℓ(W) = ½ Σ_t ‖W k_t − v_t‖² + λ ‖W − W₀‖²

has the gradient (W K − V)ᵀ... written out: Σ_t (W k_t − v_t) k_tᵀ + 2λ (W − W₀), and one step of it is

    W ← W − η · [(K Wᵀ − V)ᵀ K + 2λ (W − W₀)]

which needs no backward pass through the network: a learn is forward passes only.
"""

from __future__ import annotations

import torch


def reconstruction_loss(w: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, anchor: float = 0.0, w0: torch.Tensor | None = None) -> torch.Tensor:
    """½ Σ_t ‖W k_t − v_t‖² + anchor · ‖W − W₀‖² (keys: n × d_k, values: n × d_out, W: d_out × d_k)."""
    loss = 0.5 * ((keys @ w.T - values) ** 2).sum()
    return loss + anchor * ((w - w0) ** 2).sum() if anchor and w0 is not None else loss


def delta_step(w: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, lr: float, anchor: float = 0.0, w0: torch.Tensor | None = None) -> torch.Tensor:
    """W after one gradient step of `reconstruction_loss`, in closed form."""
    grad = (keys @ w.T - values).T @ keys
    if anchor and w0 is not None:
        grad = grad + 2 * anchor * (w - w0)
    return w - lr * grad


def value_directions(model, token_ids: torch.Tensor) -> torch.Tensor:
    """Unit vectors in the residual stream that raise each token's logit most: output embedding ⊙ final norm
    weight (Gemma's norm scales by 1 + weight)."""
    embedding = model.get_output_embeddings().weight[token_ids].float()
    norm = getattr(model.get_decoder(), "norm", None)
    scale = getattr(norm, "weight", None)
    if scale is not None:
        scale = scale.float() + (1.0 if "Gemma" in type(norm).__name__ else 0.0)
        embedding = embedding * scale
    return embedding / embedding.norm(dim=-1, keepdim=True).clamp(min=1e-6)


def safe_lr(keys: torch.Tensor, lr: float, iterations: int = 8) -> float:
    """`lr` divided by the largest eigenvalue of the keys' Gram matrix KᵀK when that exceeds 1 (power iteration):
    a batch's step then stays stable however many of its keys overlap, and is `lr` for orthonormal keys."""
    if keys.numel() == 0:
        return lr
    v = torch.ones(keys.shape[1], dtype=keys.dtype, device=keys.device)
    largest = 0.0
    for _ in range(iterations):
        u = keys.T @ (keys @ v)
        largest = float(u.norm())
        v = u / max(largest, 1e-12)
    return lr / max(1.0, largest)
