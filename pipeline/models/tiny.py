"""Tiny multimodal reference model: factory params + the tiny_mm dataset -> a trained torch model
(image + tokens + audio -> 4-class logits) that trains in seconds on a CPU.

The architecture sticks to ops every exporter here handles (Conv, Gemm/MatMul, Gather, ReduceMean/Max, Log, ...):
the audio tower computes its log-mel spectrogram in the graph with fixed DFT kernels run as a strided conv1d,
because torch.stft does not export to ONNX opset 17 nor convert to TFLite/OpenVINO int8.

`text_tower: transformer` swaps the pooled text tower for a 2-layer padding-masked transformer encoder (LayerNorm,
erf GELU, softmax attention): the ops that make real text encoders hard for int8 and TFLite, at a size that still
trains in seconds. `TinyMultimodal.components` splits a model into encoders + fusion head (see components.py).
"""
from __future__ import annotations

import math
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn
from torch.nn import functional as F

from ..errors import ConfigError
from ..iospec import AudioPreprocessing, ImagePreprocessing, IOSpec, TensorSpec, TokenizerPreprocessing
from . import FactoryContext
from .components import Component, embedding_spec

# Must equal calibration_data/tiny_mm/labels.txt (a test checks it).
LABELS = ("alert_none", "alert_low", "alert_medium", "alert_high")
# Per-channel mean/std of the tiny_mm train images scaled to 0..1 (dataset.json: image_mean / image_std).
IMAGE_MEAN = (0.5092, 0.5075, 0.5067)
IMAGE_STD = (0.2133, 0.2186, 0.2158)
VOCAB_SIZE = 74  # lines in calibration_data/tiny_mm/vocab.txt
MAX_TOKENS = 16
IMAGE_SIZE = 24
SAMPLE_RATE_HZ = 4000
NUM_SAMPLES = 512
PAD_ID = 0
LOG_EPS = 1e-6
# Default additive attention bias on padded keys (transformer text tower). Finite, not -inf: int8 grids and TFLite
# cannot hold -inf, and an all-pad row would give NaN; exp(-1e4) is exactly 0 in float32, so pads get no weight.
# The size is what real encoders do (HF uses the float minimum) and what int8 trips on: calibrated over
# [-1e4, scores], the int8 step of the scores+bias tensor is ~40, so the real scores round to 0 (tiny_mm: -14 pt).
MASK_BIAS = -1e4


class TinyParams(BaseModel):
    """Factory params (the `model.params` mapping of a release config); every key is optional."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    fusion: Literal["concat", "attention"] = Field("concat", description="how the three tower embeddings meet")
    embed_dim: int = Field(32, ge=4, le=256, description="width of each tower's output embedding")
    hidden_dim: int = Field(64, ge=4, le=1024, description="width of the fusion MLP's hidden layer")
    epochs: int = Field(20, ge=1, le=500, description="training epochs over the train split")
    batch_size: int = Field(64, ge=1, le=4096, description="training mini-batch size")
    lr: float = Field(3e-3, gt=0, le=1.0, description="peak AdamW learning rate of the one-cycle schedule")
    weight_decay: float = Field(1e-4, ge=0, description="AdamW weight decay")
    augment: bool = Field(True, description="random image flips and audio polarity inversion while training")
    threads: int = Field(2, ge=1, le=64, description="torch CPU threads while training (fixed for reproducibility)")
    n_fft: int = Field(128, ge=16, le=NUM_SAMPLES, description="audio front-end DFT window length (samples)")
    hop: int = Field(32, ge=1, le=NUM_SAMPLES, description="audio front-end hop between frames (samples)")
    n_mels: int = Field(24, ge=4, le=128, description="mel bands of the audio front-end")
    vocab_size: int = Field(VOCAB_SIZE, ge=2, description="token embedding rows (lines of vocab.txt)")
    text_tower: Literal["pool", "transformer"] = Field(
        "pool", description="text tower: masked mean of token embeddings, or a small transformer encoder")
    text_layers: int = Field(2, ge=1, le=12, description="transformer text tower: encoder layers")
    text_heads: int = Field(2, ge=1, le=16, description="transformer text tower: attention heads (divide embed_dim)")
    text_ffn_dim: int = Field(64, ge=4, le=4096, description="transformer text tower: feed-forward hidden width")
    text_mask_bias: float = Field(
        MASK_BIAS, ge=-1e30, le=-20.0,
        description="transformer text tower: finite score bias on pad keys (-1e4 needs the attention Add and Softmax "
                    "kept float under int8; -30 does not)")


TRANSFORMER_ONLY = ("text_layers", "text_heads", "text_ffn_dim", "text_mask_bias")


def _validate(params: dict | None) -> TinyParams:
    """Raw params -> TinyParams (pydantic); any unknown key or bad value -> one-line ConfigError naming the key."""
    try:
        return TinyParams(**(params or {}))
    except ValidationError as err:
        first = err.errors()[0]
        key = ".".join(str(p) for p in first["loc"]) or "params"
        if first["type"] == "extra_forbidden":
            known = ", ".join(TinyParams.model_fields)
            msg = f"unknown TinyMultimodal param '{key}'; known params: {known}"
        else:
            msg = f"TinyMultimodal param '{key}': {first['msg']} (got {first.get('input')!r})"
        raise ConfigError(msg) from err


def parse_params(params: dict | None) -> TinyParams:
    """Raw params -> TinyParams; any unknown key, bad value or contradiction -> one-line ConfigError naming the key."""
    p = _validate(params)
    if p.text_tower == "pool":
        # Set but unused would be a silent ignore of the user's setting.
        stray = [k for k in TRANSFORMER_ONLY if k in p.model_fields_set]
        if stray:
            raise ConfigError(f"TinyMultimodal param '{stray[0]}' applies only with text_tower: transformer")
    elif p.embed_dim % p.text_heads:
        raise ConfigError(f"TinyMultimodal param 'text_heads': {p.text_heads} does not divide "
                          f"embed_dim={p.embed_dim}")
    return p


def _mel_filterbank(n_fft: int, n_mels: int, sample_rate: int, f_min: float = 60.0) -> np.ndarray:
    """Triangular HTK-mel filters over the rfft bins -> [n_mels, n_fft // 2 + 1], each row summing to 1."""
    def hz_to_mel(f):
        return 2595.0 * np.log10(1.0 + f / 700.0)

    def mel_to_hz(m):
        return 700.0 * (10 ** (m / 2595.0) - 1.0)

    bins_hz = np.arange(n_fft // 2 + 1) * sample_rate / n_fft
    edges = mel_to_hz(np.linspace(hz_to_mel(f_min), hz_to_mel(sample_rate / 2), n_mels + 2))
    lower, centre, upper = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins_hz - lower) / (centre - lower)
    falling = (upper - bins_hz) / (upper - centre)
    fb = np.clip(np.minimum(rising, falling), 0.0, None)
    # Low filters can be narrower than one bin; give each at least its nearest bin so none is dead.
    for row, c in zip(fb, centre[:, 0]):
        if row.sum() == 0:
            row[np.argmin(np.abs(bins_hz - c))] = 1.0
    return (fb / fb.sum(axis=1, keepdims=True)).astype(np.float32)


class LogMel(nn.Module):
    """Waveform [B, S] -> log-mel [B, n_mels, frames] with fixed (non-trainable buffer) kernels.

    int8 note: the power and mel tensors before the log span ~1e-6..1e3, which no 8-bit scale covers; quantized,
    the quiet bands collapse to log(eps). Exported to ONNX, the nodes /audio/logmel/{Mul, Mul_1, Add, MatMul,
    Add_1} must stay float (ORT static int8 loses ~5 pt on tiny_mm otherwise, ~0.2 pt with them float).
    """

    def __init__(self, n_fft: int, hop: int, n_mels: int, sample_rate: int):
        super().__init__()
        self.hop = hop
        n = np.arange(n_fft)
        k = np.arange(n_fft // 2 + 1)[:, None]
        window = 0.5 - 0.5 * np.cos(2 * np.pi * n / n_fft)  # periodic Hann
        angle = 2 * np.pi * k * n / n_fft
        # Real and imaginary DFT rows stacked as conv1d output channels: one Conv node does the whole DFT.
        kernel = np.concatenate([window * np.cos(angle), -window * np.sin(angle)])[:, None, :]
        self.register_buffer("dft_kernel", torch.from_numpy(kernel.astype(np.float32)))
        self.register_buffer("mel_fb", torch.from_numpy(_mel_filterbank(n_fft, n_mels, sample_rate)))
        self.n_bins = n_fft // 2 + 1

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        spec = F.conv1d(audio.unsqueeze(1), self.dft_kernel, stride=self.hop)
        real, imag = spec[:, : self.n_bins], spec[:, self.n_bins :]
        power = real * real + imag * imag  # Mul/Add, not Pow: friendlier to TFLite int8
        return torch.log(torch.matmul(self.mel_fb, power) + LOG_EPS)


def _conv_bn(cin: int, cout: int, stride: int = 1, dims: int = 2) -> nn.Sequential:
    conv = nn.Conv2d if dims == 2 else nn.Conv1d
    bn = nn.BatchNorm2d if dims == 2 else nn.BatchNorm1d
    return nn.Sequential(conv(cin, cout, 3, stride=stride, padding=1, bias=False), bn(cout), nn.ReLU())


class TextTower(nn.Module):
    """Token ids [B, T] -> embedding [B, D] by masked mean pooling (pads do not count)."""

    def __init__(self, vocab_size: int, dim: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, dim)
        self.proj = nn.Linear(dim, dim)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = (tokens != PAD_ID).to(torch.float32).unsqueeze(-1)
        summed = (self.embed(tokens) * mask).sum(dim=1)
        # clamp: an all-pad sequence gives a zero embedding instead of NaN.
        return torch.relu(self.proj(summed / mask.sum(dim=1).clamp(min=1.0)))


class EncoderLayer(nn.Module):
    """Post-LN transformer encoder layer (BERT/MiniLM order) from plain ops: x [B, T, D], bias [B, 1, T] -> [B, T, D].

    Heads are constant slices of the last axis run as separate 3-D matmuls, not a reshape to [B, H, T, d] (nor
    torch.chunk): both trace the batch size into Shape/Gather/Div nodes, which static-shape converters dislike.
    """

    def __init__(self, dim: int, heads: int, ffn_dim: int):
        super().__init__()
        self.dim, self.head_dim = dim, dim // heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm1 = nn.LayerNorm(dim)
        # Exact (erf) GELU on purpose: the form real text encoders use, and the one that trips TFLite (Flex Erf).
        self.ffn = nn.Sequential(nn.Linear(dim, ffn_dim), nn.GELU(), nn.Linear(ffn_dim, dim))
        self.norm2 = nn.LayerNorm(dim)
        self.scale = 1.0 / math.sqrt(self.head_dim)

    def edgepipe_attention(self) -> dict:
        """Where the heads live, for structured head pruning (pipeline/compress/structured.py): q, k and v are
        row blocks of one fused Linear."""
        d = self.dim
        return {"head_dim": self.head_dim, "heads": d // self.head_dim,
                "rows": [(self.qkv, 0), (self.qkv, d), (self.qkv, 2 * d)], "out": self.out}

    def edgepipe_resync(self) -> None:
        """After head pruning: the attention width (no longer the model width) from the fused q/k/v layer."""
        self.dim = self.qkv.out_features // 3

    def forward(self, x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
        qkv = self.qkv(x)
        d, hd = self.dim, self.head_dim
        # Scale q once (a Mul) rather than dividing the scores: no Div node in the attention.
        q = qkv[..., :d] * self.scale
        heads = []
        for lo in range(0, d, hd):
            scores = torch.matmul(q[..., lo : lo + hd], qkv[..., d + lo : d + lo + hd].transpose(1, 2))
            attn = torch.softmax(scores + bias, dim=-1)
            heads.append(torch.matmul(attn, qkv[..., 2 * d + lo : 2 * d + lo + hd]))
        x = self.norm1(x + self.out(torch.cat(heads, dim=-1)))
        return self.norm2(x + self.ffn(x))


class TransformerTextTower(nn.Module):
    """Token ids [B, T] -> embedding [B, D]: token + learned position embeddings, a padding-masked transformer
    encoder, masked mean pooling. Pad positions influence nothing: they are masked as keys in every layer and
    left out of the mean."""

    def __init__(self, p: TinyParams):
        super().__init__()
        dim = p.embed_dim
        self.embed = nn.Embedding(p.vocab_size, dim)
        self.pos = nn.Parameter(torch.randn(MAX_TOKENS, dim) * 0.02)  # small start, as BERT-style encoders do
        self.norm = nn.LayerNorm(dim)
        self.layers = nn.ModuleList(EncoderLayer(dim, p.text_heads, p.text_ffn_dim) for _ in range(p.text_layers))
        self.proj = nn.Linear(dim, dim)
        self.mask_bias = p.text_mask_bias

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = (tokens != PAD_ID).to(torch.float32)
        bias = ((mask - 1.0) * -self.mask_bias).unsqueeze(1)  # 0 on real keys, mask_bias on pads; for every query
        x = self.norm(self.embed(tokens) + self.pos)
        for layer in self.layers:
            x = layer(x, bias)
        mask = mask.unsqueeze(-1)
        pooled = (x * mask).sum(dim=1) / mask.sum(dim=1).clamp(min=1.0)
        return torch.relu(self.proj(pooled))


class ImageTower(nn.Module):
    """Image [B, 3, 24, 24] -> embedding [B, D]: three conv/bn/relu blocks and global max pooling.

    Max, not average: the object covers a few percent of the frame, and averaging its edge responses with the
    background's left the CNN at chance on tiny_mm, while max pooling learns it in a few epochs.
    """

    def __init__(self, dim: int):
        super().__init__()
        self.features = nn.Sequential(_conv_bn(3, 32), _conv_bn(32, 32, 2), _conv_bn(32, 32, 2))
        self.proj = nn.Linear(32, dim)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.proj(self.features(image).amax(dim=(2, 3))))


class AudioTower(nn.Module):
    """Waveform [B, 512] -> embedding [B, D]: in-graph log-mel, two conv1d/bn/relu blocks, mean over time.

    No standalone normalisation after the log: a BatchNormalization there cannot fold into a conv and ORT
    mis-handles its per-channel weight; the first conv+bn absorbs the log-mel offset instead.
    """

    def __init__(self, p: TinyParams):
        super().__init__()
        self.logmel = LogMel(p.n_fft, p.hop, p.n_mels, SAMPLE_RATE_HZ)
        self.features = nn.Sequential(_conv_bn(p.n_mels, 32, dims=1), _conv_bn(32, 32, dims=1))
        self.proj = nn.Linear(32, p.embed_dim)

    def forward(self, audio: torch.Tensor) -> torch.Tensor:
        x = self.features(self.logmel(audio))
        return torch.relu(self.proj(x.mean(dim=2)))


class AttentionFusion(nn.Module):
    """Three tower embeddings -> [B, 3 * D]: one single-head self-attention over the modality tokens."""

    def __init__(self, dim: int):
        super().__init__()
        self.modality = nn.Parameter(torch.zeros(3, dim))
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)
        self.norm = nn.LayerNorm(dim)
        self.scale = 1.0 / math.sqrt(dim)

    def forward(self, parts: list[torch.Tensor]) -> torch.Tensor:
        x = torch.stack(parts, dim=1) + self.modality
        q, k, v = self.qkv(x).chunk(3, dim=-1)
        attn = torch.softmax(torch.matmul(q, k.transpose(1, 2)) * self.scale, dim=-1)
        x = self.norm(x + self.out(torch.matmul(attn, v)))
        return x.flatten(1)


class TinyMultimodalNet(nn.Module):
    """forward(image, tokens, audio) -> logits [B, 4]."""

    def __init__(self, p: TinyParams):
        super().__init__()
        # Built first either way: the default (pool) model's parameter init order, hence its weights, stay as before.
        self.text = TextTower(p.vocab_size, p.embed_dim) if p.text_tower == "pool" else TransformerTextTower(p)
        self.image = ImageTower(p.embed_dim)
        self.audio = AudioTower(p)
        self.fusion = AttentionFusion(p.embed_dim) if p.fusion == "attention" else None
        self.head = nn.Sequential(nn.Linear(3 * p.embed_dim, p.hidden_dim), nn.ReLU(),
                                  nn.Linear(p.hidden_dim, len(LABELS)))

    def forward(self, image: torch.Tensor, tokens: torch.Tensor, audio: torch.Tensor) -> torch.Tensor:
        return classify(self.fusion, self.head, [self.image(image), self.text(tokens), self.audio(audio)])


def classify(fusion: nn.Module | None, head: nn.Module, parts: list[torch.Tensor]) -> torch.Tensor:
    """[image, text, audio] embeddings -> logits; shared by the fused model and its fusion_head component."""
    fused = torch.cat(parts, dim=1) if fusion is None else fusion(parts)
    return head(fused)


class _EncoderView(nn.Module):
    """One tower of a fused TinyMultimodalNet, kept under the same attribute name, so the exported node names
    (/audio/logmel/Mul, ...) and state-dict keys match the fused model's: keep_float patterns apply unchanged."""

    def __init__(self, net: TinyMultimodalNet, tower: str):
        super().__init__()
        self.tower = tower
        setattr(self, tower, getattr(net, tower))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, self.tower)(x)


class _FusionHeadView(nn.Module):
    """The fusion (if any) and the classifier head of a fused TinyMultimodalNet: three embeddings -> logits."""

    def __init__(self, net: TinyMultimodalNet):
        super().__init__()
        self.fusion = net.fusion
        self.head = net.head

    def forward(self, image_embedding: torch.Tensor, text_embedding: torch.Tensor,
                audio_embedding: torch.Tensor) -> torch.Tensor:
        return classify(self.fusion, self.head, [image_embedding, text_embedding, audio_embedding])


# component name -> (tower attribute, model input, embedding output); the fusion head takes the outputs in this order
ENCODERS = {"image_encoder": ("image", "image", "image_embedding"),
            "text_encoder": ("text", "tokens", "text_embedding"),
            "audio_encoder": ("audio", "audio", "audio_embedding")}


def _augment(batch: list[torch.Tensor], rng: np.random.Generator) -> list[torch.Tensor]:
    """Label-preserving flips: mirrored images (a tall blob stays tall) and polarity-inverted audio."""
    image, tokens, audio = batch
    n = len(image)
    flip_w = torch.from_numpy(rng.random(n) < 0.5)[:, None, None, None]
    flip_h = torch.from_numpy(rng.random(n) < 0.5)[:, None, None, None]
    image = torch.where(flip_w, image.flip(3), image)
    image = torch.where(flip_h, image.flip(2), image)
    sign = torch.from_numpy(np.where(rng.random(n) < 0.5, -1.0, 1.0).astype(np.float32))[:, None]
    return [image, tokens, audio * sign]


def _fit(model: nn.Module, inputs: list[torch.Tensor], labels: torch.Tensor, p: TinyParams,
         seed: int, ctx: FactoryContext) -> None:
    """Mini-batch AdamW on the train split; shuffle order and augmentation come from a seeded numpy Generator."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=p.lr, weight_decay=p.weight_decay)
    steps_per_epoch = math.ceil(len(labels) / p.batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=p.lr, total_steps=p.epochs * steps_per_epoch)
    order_rng = np.random.default_rng(seed)
    model.train()
    with ctx.progress.task("train tiny multimodal", total=p.epochs) as task:
        for _ in range(p.epochs):
            order = torch.from_numpy(order_rng.permutation(len(labels)))
            for start in range(0, len(labels), p.batch_size):
                idx = order[start : start + p.batch_size]
                batch = _augment([x[idx] for x in inputs], order_rng) if p.augment else [x[idx] for x in inputs]
                loss = F.cross_entropy(model(*batch), labels[idx])
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                scheduler.step()
            task.advance(1)
    model.eval()


def _check_train_split(train, p: TinyParams, root) -> None:
    """Fail with one line before training on data the network cannot take (would be an IndexError deep in torch)."""
    if train.labels is None:
        raise ConfigError(f"{root}/train.npz has no 'label' field; the tiny model trains on it")
    if train.labels.min() < 0 or train.labels.max() >= len(LABELS):
        raise ConfigError(f"{root}/train.npz labels must be 0..{len(LABELS) - 1} ({', '.join(LABELS)})")
    if train.inputs["tokens"].max() >= p.vocab_size:
        raise ConfigError(f"{root}/vocab.txt has more than vocab_size={p.vocab_size} entries; "
                          "set model.params.vocab_size to its line count")


def _check_module(module: nn.Module, p: TinyParams) -> None:
    """Components are views into `module`: refuse one that is not the architecture these params describe."""
    text_type = TextTower if p.text_tower == "pool" else TransformerTextTower
    if not isinstance(module, TinyMultimodalNet) or not isinstance(module.text, text_type) \
            or (module.fusion is None) != (p.fusion == "concat") or module.head[0].in_features != 3 * p.embed_dim:
        raise ConfigError(f"TinyMultimodal.components: the module is a {type(module).__name__} that does not match "
                          f"params (text_tower={p.text_tower}, fusion={p.fusion}, embed_dim={p.embed_dim})")


class TinyMultimodal:
    """Model factory for `pipeline.models.tiny:TinyMultimodal` (see pipeline/models/__init__.py)."""

    def iospec(self, params: dict | None = None) -> IOSpec:
        parse_params(params)  # unknown keys fail here too, before any data is touched
        tokenizer = TokenizerPreprocessing(vocab_file="vocab.txt", max_length=MAX_TOKENS, pad_id=PAD_ID, unk_id=1)
        return IOSpec(
            inputs=(
                TensorSpec(name="image", shape=(1, 3, IMAGE_SIZE, IMAGE_SIZE), dtype="float32", layout="NCHW",
                           modality="image", source_field="image",
                           preprocessing=ImagePreprocessing(mean=IMAGE_MEAN, std=IMAGE_STD)),
                TensorSpec(name="tokens", shape=(1, MAX_TOKENS), dtype="int64", layout="NT", modality="text",
                           source_field="text", preprocessing=tokenizer),
                TensorSpec(name="audio", shape=(1, NUM_SAMPLES), dtype="float32", layout="NS", modality="audio",
                           source_field="audio",
                           preprocessing=AudioPreprocessing(sample_rate_hz=SAMPLE_RATE_HZ, num_samples=NUM_SAMPLES)),
            ),
            outputs=(TensorSpec(name="logits", shape=(1, len(LABELS)), dtype="float32", layout="NC"),),
            labels=LABELS,
        )

    def components(self, params: dict | None, module: nn.Module) -> dict[str, Component]:
        """The fused model as image/text/audio encoders + fusion head, each a view sharing `module`'s weights."""
        p = parse_params(params)
        _check_module(module, p)
        spec = self.iospec(params)
        parts: dict[str, Component] = {}
        for name, (tower, input_name, output_name) in ENCODERS.items():
            view = _EncoderView(module, tower).train(module.training)
            io = IOSpec(inputs=(spec.input(input_name),), outputs=(embedding_spec(output_name, p.embed_dim),))
            parts[name] = Component(module=view, iospec=io, feeds_from={input_name: f"input:{input_name}"})
        embeddings = [(enc, out) for enc, (_, _, out) in ENCODERS.items()]
        io = IOSpec(inputs=tuple(embedding_spec(out, p.embed_dim) for _, out in embeddings), outputs=spec.outputs,
                    labels=spec.labels)
        parts["fusion_head"] = Component(module=_FusionHeadView(module).train(module.training), iospec=io,
                                         feeds_from={out: f"output:{enc}.{out}" for enc, out in embeddings})
        return parts

    def construct(self, params: dict | None = None) -> nn.Module:
        return TinyMultimodalNet(parse_params(params)).eval()

    def create(self, params: dict | None, ctx: FactoryContext) -> nn.Module:
        p = parse_params(params)
        train = ctx.dataset.split("train")
        _check_train_split(train, p, ctx.dataset.root)
        names = self.iospec(params).input_names
        inputs = [torch.from_numpy(train.inputs[name]) for name in names]
        labels = torch.from_numpy(train.labels)
        previous_threads = torch.get_num_threads()
        # Fixed thread count and seed: the same seed gives bit-identical weights with a given torch build and CPU
        # (float reductions are split per thread, so the count is part of the result).
        torch.set_num_threads(p.threads)
        try:
            torch.manual_seed(ctx.seed)
            model = TinyMultimodalNet(p)
            _fit(model, inputs, labels, p, ctx.seed, ctx)
        finally:
            torch.set_num_threads(previous_threads)
        return model
