"""IOSpec: the named inputs and outputs of a model, declared once (pydantic) -> used by export, calibration,
verification, the bundle and the device agent.

Preprocessing is data, not code: a raw dataset field plus the declared steps gives the model input, so the
bundle can tell firmware exactly what to do.
"""
from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

DType = Literal["float32", "float16", "int64", "int32", "int8", "uint8", "int16"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ImagePreprocessing(_Strict):
    kind: Literal["image"] = "image"
    source_layout: Literal["HWC"] = Field("HWC", description="layout of the raw uint8 image in the dataset")
    scale: float = Field(1.0 / 255.0, description="raw pixel values are multiplied by this first")
    mean: tuple[float, ...] = Field(description="per-channel mean subtracted after scaling")
    std: tuple[float, ...] = Field(description="per-channel std divided after subtracting the mean")
    resize_shorter: int | None = Field(None, ge=1, description="a device first resizes the frame so its shorter side "
                                       "has this many pixels (bicubic), then centre-crops to the input size; "
                                       "None: the frame already has the input size")


class TokenizerPreprocessing(_Strict):
    kind: Literal["tokenizer"] = "tokenizer"
    vocab_file: str = Field(description="vocabulary file (one token per line) relative to the dataset dir")
    lowercase: bool = Field(True, description="lower-case text before splitting")
    max_length: int = Field(description="token sequences are padded/truncated to this length")
    pad_id: int = Field(0, description="id used for padding")
    unk_id: int = Field(1, description="id used for out-of-vocabulary words")
    algorithm: Literal["words", "wordpiece"] = Field(
        "words", description="'words': lower-cased word/punctuation split looked up whole; 'wordpiece': BERT uncased "
        "WordPiece with [CLS] ... [SEP] (pipeline/wordpiece.py)")
    output: Literal["ids", "mask"] = Field("ids", description="token ids, or the attention mask (1 = real token) of "
                                           "the same tokenization")


class AudioPreprocessing(_Strict):
    kind: Literal["audio"] = "audio"
    sample_rate_hz: int = Field(description="sample rate of the waveform the model expects")
    scale: float = Field(1.0 / 32768.0, description="raw int16 samples are multiplied by this")
    num_samples: int = Field(description="waveforms are padded/truncated to this many samples")


Preprocessing = ImagePreprocessing | TokenizerPreprocessing | AudioPreprocessing


class TensorSpec(_Strict):
    name: str = Field(description="tensor name in every exported graph")
    shape: tuple[int, ...] = Field(description="static shape, batch 1 first")
    dtype: DType = Field(description="element type of the model input/output")
    layout: str = Field("", description="axis letters, e.g. NCHW, NT (tokens), NS (samples), NC")
    modality: Literal["image", "text", "audio", "none"] = Field("none", description="modality of an input")
    source_field: str = Field("", description="dataset field the input is made from")
    preprocessing: Preprocessing | None = Field(None, discriminator="kind", description="raw -> model input")


def image_hwc(spec: TensorSpec) -> tuple[int, int, int]:
    """What it does: an image input -> (height, width, channels) of the HWC images its preprocessing takes, from the
    input's layout (NCHW or NHWC; default NHWC) and shape."""
    layout = spec.layout or "NHWC"
    channels = spec.shape[layout.index("C")] if "C" in layout else len(spec.preprocessing.mean)
    return spec.shape[layout.index("H")], spec.shape[layout.index("W")], channels


def raw_sample_shape(spec: TensorSpec, stored_as_paths: bool = False) -> tuple[int | None, ...]:
    """What it does: a model input -> the per-sample shape its raw dataset field must have (None: any size on that
    axis): HWC images of the input's size (or one path per sample when the images are stored as files), one
    waveform, one text, or the input's own shape when it has no preprocessing."""
    pre = spec.preprocessing
    if isinstance(pre, ImagePreprocessing):
        return () if stored_as_paths else image_hwc(spec)
    if isinstance(pre, AudioPreprocessing):
        return (None,)
    if isinstance(pre, TokenizerPreprocessing):
        return ()
    return tuple(spec.shape[1:])


class IOSpec(_Strict):
    inputs: tuple[TensorSpec, ...] = Field(description="model inputs, in call order")
    outputs: tuple[TensorSpec, ...] = Field(description="model outputs, in return order")
    labels: tuple[str, ...] = Field((), description="class names for a classification output")

    def input(self, name: str) -> TensorSpec:
        for spec in self.inputs:
            if spec.name == name:
                return spec
        raise KeyError(name)

    @property
    def input_names(self) -> list[str]:
        return [s.name for s in self.inputs]

    @property
    def output_names(self) -> list[str]:
        return [s.name for s in self.outputs]
