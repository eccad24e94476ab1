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

from .anatomy import decoder_layers, replay_prefix


def reconstruction_loss(w: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, anchor: float = 0.0, w0: torch.Tensor | None = None) -> torch.Tensor:
    """½ Σ_t ‖W k_t − v_t‖² + anchor · ‖W − W₀‖² (keys: n × d_k, values: n × d_out, W: d_out × d_k)."""
    loss = 0.5 * ((keys @ w.T - values) ** 2).sum()
    return loss + anchor * ((w - w0) ** 2).sum() if anchor and w0 is not None else loss


def delta_step(w: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, lr: float, anchor: float = 0.0, w0: torch.Tensor | None = None, column_mask: torch.Tensor | None = None) -> torch.Tensor:
    """W after one gradient step of `reconstruction_loss`, in closed form (only in the columns `column_mask`
    keeps, when given)."""
    grad = (keys @ w.T - values).T @ keys
    if anchor and w0 is not None:
        grad = grad + 2 * anchor * (w - w0)
    return w - lr * (grad if column_mask is None else grad * column_mask)


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


def keys_and_values(strategy, batch: dict) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Per fast layer of a ttt-linear `strategy`: the keys at the positions that predict a labelled token, and
    their values (the next token's logit direction × value_scale × the residual stream's norm there ÷ the layer
    count)."""
    layers, norms = strategy.fast_layers(), {}
    blocks = decoder_layers(strategy.model)
    hooks = [blocks[i].register_forward_pre_hook(lambda mod, args, kwargs, i=i: norms.__setitem__(i, (args[0] if args else kwargs["hidden_states"]).float().norm(dim=-1)), with_kwargs=True) for i in strategy.layer_ids]
    for m in layers:
        m.recorded = []
    try:
        with torch.no_grad(), strategy._precision():
            hidden = batch.get("hidden")
            run = lambda: strategy.model.get_decoder()(input_ids=batch["input_ids"], attention_mask=strategy._mask(batch), position_ids=batch.get("position_ids"), use_cache=False)  # noqa: E731
            if hidden is None:
                run()
            else:
                with replay_prefix(strategy.model, strategy.layer_ids[0], hidden):
                    run()
        targets = batch["labels"][:, 1:]
        keep = targets != -100
        directions = value_directions(strategy.model, targets[keep])
        scale = strategy.config.value_scale / len(layers)
        return [(m.recorded[0][:, :-1][keep].float(), directions * (scale * norms[i][:, :-1][keep])[:, None]) for i, m in zip(strategy.layer_ids, layers)]
    finally:
        for h in hooks:
            h.remove()
        for m in layers:
            m.recorded = None
