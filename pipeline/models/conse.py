"""ConSE zero-shot head: ImageNet logits [N,1000] -> unit-length embedding [N,384] in the text encoder's space.

Convex combination of semantic embeddings (Norouzi et al., 2014): the softmax probabilities of the T most likely
classes weight the text embeddings of those class names; the result is L2-normalised, so its dot product with a
prompt embedding is a cosine. The top-T selection is a threshold at the T-th largest probability (TopK + compare),
which the TorchScript ONNX exporter maps to plain TopK / GreaterOrEqual / Mul / MatMul (no Scatter).
Ties at the threshold keep every tied class, so more than T classes may contribute.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn

DEFAULT_TOP_T = 10
ITERATIVE_MAX_T = 32  # see ConSE._threshold
NORM_EPS = 1e-12


class ConSE(nn.Module):
    """logits [N,C] -> softmax -> keep the top-T probabilities -> weights @ label_embeddings [C,D] -> L2 normalise."""

    def __init__(self, label_embeddings: torch.Tensor | np.ndarray, top_t: int = DEFAULT_TOP_T) -> None:
        super().__init__()
        table = torch.as_tensor(np.asarray(label_embeddings, dtype=np.float32))
        if table.ndim != 2 or not 1 <= top_t <= table.shape[0]:
            raise ValueError(f"ConSE needs a [classes, dim] table and 1 <= top_t <= classes; got "
                             f"{tuple(table.shape)} and top_t={top_t}")
        self.top_t = int(top_t)
        self.register_buffer("label_embeddings", table.clone())

    def forward(self, logits: torch.Tensor) -> torch.Tensor:
        """Unit-length semantic embedding [N,D] of each row of logits."""
        probs = logits.softmax(dim=-1)
        threshold = self._threshold(probs)
        weights = probs * (probs >= threshold).to(probs.dtype)
        embedding = torch.matmul(weights, self.label_embeddings)
        return embedding / embedding.norm(dim=-1, keepdim=True).clamp_min(NORM_EPS)

    def _threshold(self, probs: torch.Tensor) -> torch.Tensor:
        """The T-th largest probability per row [N,1]. For T <= ITERATIVE_MAX_T it is found by T-1 rounds of
        "drop the current maximum" (ReduceMax / GreaterOrEqual / Where), because onnx2tf 1.28 cannot convert an ONNX
        TopK under numpy 2 (its K is a 1-element tensor: "only 0-dimensional arrays can be converted to Python
        scalars"); larger T uses TopK. Same result unless probabilities tie exactly."""
        if self.top_t > ITERATIVE_MAX_T:
            return torch.topk(probs, self.top_t, dim=-1).values[..., -1:]
        rest = probs
        for _ in range(self.top_t - 1):
            top = rest.amax(dim=-1, keepdim=True)
            rest = torch.where(rest >= top, torch.full_like(rest, -1.0), rest)
        return rest.amax(dim=-1, keepdim=True)


def class_text(lemmas: str | Sequence[str], template: str | None = None) -> str:
    """Text for one class: its first lemma ('tabby' of 'tabby, tabby cat'), optionally put into a template
    such as 'a photo of a {}'."""
    names = [s.strip() for s in lemmas.split(",")] if isinstance(lemmas, str) else [s.strip() for s in lemmas]
    if not names or not names[0]:
        raise ValueError(f"class has no lemma: {lemmas!r}")
    return template.format(names[0]) if template else names[0]


def embed_texts(encode: Callable[[Sequence[str], int], tuple[np.ndarray, np.ndarray]], encoder: nn.Module,
                texts: Sequence[str], max_length: int = 32, batch_size: int = 256) -> torch.Tensor:
    """Sentence embeddings [len(texts), D] of `texts`: `encode` is a tokenizer's encode(texts, max_length),
    `encoder` maps (input_ids, attention_mask) -> embeddings. Each batch is cut to its longest text (no effect
    on mean-pooled embeddings, much faster)."""
    out = []
    with torch.inference_mode():
        for start in range(0, len(texts), batch_size):
            ids, mask = encode(texts[start:start + batch_size], max_length)
            length = max(int(mask.sum(axis=1).max()), 2)
            out.append(encoder(torch.from_numpy(ids[:, :length]), torch.from_numpy(mask[:, :length])))
    return torch.cat(out)
