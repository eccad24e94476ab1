"""TF-IDF neuron gating: pick the MLP neurons a document uses much and general text uses little.

Each MLP neuron is a term. A neuron "fires" on a token when its activation is among the top
`fire_fraction` of that layer's neurons for the token. Counting firings per text gives a texts × neurons
count matrix: scikit-learn's TfidfTransformer fits the inverse document frequency on a general corpus
(calibration, cached per model), and a document's own counts times that idf rank its neurons.
"""

from __future__ import annotations

import hashlib
from importlib.resources import files

import numpy as np
import torch

from ..generation import chat_prompt
from .anatomy import decoder_layers, gated_mlp
from .context import StrategyContext


def general_corpus() -> list[str]:
    """Everyday text shipped with clslm (questions and statements on many topics)."""
    text = files("clslm").joinpath("data/general.txt").read_text(encoding="utf-8")
    return [line.strip() for line in text.splitlines() if line.strip()]


def neuron_activations(model, tokenizer, texts: list[str], layers: list[int], *, chat: bool = True) -> dict[int, list[torch.Tensor]]:
    """Per layer, per text: |activation| of every MLP neuron at every token (tokens × neurons)."""
    blocks = decoder_layers(model)
    found: dict[int, list[torch.Tensor]] = {i: [] for i in layers}
    hooks = [
        gated_mlp(blocks[i]).down_proj.register_forward_pre_hook(lambda m, args, i=i: found[i].append(args[0][0].detach().abs().float().cpu()))
        for i in layers
    ]
    try:
        with torch.no_grad():
            for text in texts:
                prompt = chat_prompt(tokenizer, text) if chat else text
                ids = tokenizer(prompt, return_tensors="pt", add_special_tokens=False)["input_ids"][:, :512]
                model(input_ids=ids.to(model.device), use_cache=False)
    finally:
        for h in hooks:
            h.remove()
    return found


def fire_counts(activations: torch.Tensor, fire_fraction: float) -> np.ndarray:
    """How many tokens each neuron fires on (top `fire_fraction` of the layer per token)."""
    k = max(1, int(round(activations.shape[-1] * fire_fraction)))
    top = activations.topk(k, dim=-1).indices
    return np.bincount(top.reshape(-1).numpy(), minlength=activations.shape[-1]).astype(np.float64)


def calibrate_idf(model, tokenizer, layers: list[int], fire_fraction: float) -> dict[int, torch.Tensor]:
    """Inverse document frequency of every neuron in `layers`, fitted on the general corpus."""
    from sklearn.feature_extraction.text import TfidfTransformer

    acts = neuron_activations(model, tokenizer, general_corpus(), layers)
    idf = {}
    for layer in layers:
        counts = np.stack([fire_counts(a, fire_fraction) for a in acts[layer]])
        idf[layer] = torch.tensor(TfidfTransformer(smooth_idf=True).fit(counts).idf_, dtype=torch.float32)
    return idf


def cached_idf(model, tokenizer, layers: list[int], fire_fraction: float, context: StrategyContext) -> dict[int, torch.Tensor]:
    """calibrate_idf, cached through the Session's context (calibration/KEY.safetensors) when the model has a
    fingerprint."""
    from safetensors.torch import load_file, save_file

    def compute() -> dict[int, torch.Tensor]:
        return calibrate_idf(model, tokenizer, layers, fire_fraction)

    if not context.model_fingerprint:
        return compute()
    corpus = hashlib.sha256("\n".join(general_corpus()).encode()).hexdigest()[:12]
    key = f"{context.model_fingerprint[:16]}-{corpus}-{fire_fraction:g}-{'_'.join(map(str, layers))}"
    return context.cached(
        f"calibration/{key}.safetensors",
        compute,
        load=lambda path: {int(k): v for k, v in load_file(path).items()},
        save=lambda idf, tmp: save_file({str(k): v for k, v in idf.items()}, str(tmp)),
    )


def select_neurons(doc_activations: list[torch.Tensor], idf: torch.Tensor, k: int, fire_fraction: float) -> torch.Tensor:
    """The k neurons with the highest tf × idf on the document (sorted indices)."""
    tf = sum(fire_counts(a, fire_fraction) for a in doc_activations)
    scores = torch.tensor(tf, dtype=torch.float32) * idf
    k = min(k, scores.numel()) if k > 0 else scores.numel()
    return scores.topk(k).indices.sort().values


