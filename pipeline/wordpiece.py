"""BERT uncased WordPiece tokenizer in pure Python: vocab.txt + texts -> input_ids / attention_mask int64 [N,L].

Reproduces the `tokenizers` pipeline of a BERT-uncased tokenizer.json (BertNormalizer with clean_text,
handle_chinese_chars, strip_accents following lowercase; BertPreTokenizer; WordPiece with '##' continuations and
max 100 chars per word; [CLS] ... [SEP] template). Only numpy is imported, so devices and the light parts of the
pipeline can tokenize without torch or the `tokenizers` package. Character classes come from Python's `unicodedata`;
code points assigned in a newer Unicode version than the Rust tables of `tokenizers` may be classed differently.
"""
from __future__ import annotations

import unicodedata
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

UNK, CLS, SEP, PAD = "[UNK]", "[CLS]", "[SEP]", "[PAD]"
CONTINUATION = "##"
MAX_CHARS_PER_WORD = 100

# CJK Unified Ideograph blocks that BERT surrounds with spaces (one token per character).
_CJK_RANGES = ((0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x2A700, 0x2B73F), (0x2B740, 0x2B81F),
               (0x2B820, 0x2CEAF), (0xF900, 0xFAFF), (0x2F800, 0x2FA1F))


def _is_control(ch: str) -> bool:
    """Categories Cc, Cf, Co, Cs, except tab/newline/CR (white space); unassigned (Cn) code points are kept, as
    `tokenizers` does (they end up as [UNK])."""
    if ch in "\t\n\r":
        return False
    category = unicodedata.category(ch)
    return category.startswith("C") and category != "Cn"


def _is_whitespace(ch: str) -> bool:
    """Tab/newline/CR or any Unicode white space (controls are dropped before this is asked)."""
    return ch in "\t\n\r " or ch.isspace()


def _is_punctuation(ch: str) -> bool:
    """ASCII symbols and punctuation (33-47, 58-64, 91-96, 123-126) or any Unicode P* category."""
    cp = ord(ch)
    if 33 <= cp <= 47 or 58 <= cp <= 64 or 91 <= cp <= 96 or 123 <= cp <= 126:
        return True
    return unicodedata.category(ch).startswith("P")


def _is_cjk(ch: str) -> bool:
    """True for a CJK ideograph (not Hiragana/Katakana/Hangul, which BERT treats like Latin letters)."""
    cp = ord(ch)
    return any(lo <= cp <= hi for lo, hi in _CJK_RANGES)


def normalize(text: str) -> str:
    """BertNormalizer: drop NUL/U+FFFD/controls, white space -> ' ', space out CJK, strip accents (NFD minus Mn),
    lowercase.

    Lower-casing is per character (like the Rust implementation), so a final Greek sigma stays 'σ'.
    """
    out = []
    for ch in text:
        if ch == "\x00" or ch == "\ufffd" or _is_control(ch):
            continue
        if _is_whitespace(ch):
            out.append(" ")
        elif _is_cjk(ch):
            out.append(f" {ch} ")
        else:
            out.append(ch)
    decomposed = unicodedata.normalize("NFD", "".join(out))
    return "".join(ch.lower() for ch in decomposed if unicodedata.category(ch) != "Mn")


def pre_tokenize(text: str) -> list[str]:
    """BertPreTokenizer: split on white space (dropped) and around every punctuation character (kept alone)."""
    words: list[str] = []
    current: list[str] = []
    for ch in text:
        if _is_whitespace(ch) or _is_punctuation(ch):
            if current:
                words.append("".join(current))
                current = []
            if not _is_whitespace(ch):
                words.append(ch)
        else:
            current.append(ch)
    if current:
        words.append("".join(current))
    return words


class WordPieceTokenizer:
    """Greedy longest-match-first WordPiece over a BERT vocab.txt, with BERT-uncased normalisation."""

    def __init__(self, vocab: Sequence[str], unk_token: str = UNK,
                 max_chars_per_word: int = MAX_CHARS_PER_WORD) -> None:
        self.vocab = {token: i for i, token in enumerate(vocab)}
        for token in (unk_token, CLS, SEP, PAD):
            if token not in self.vocab:
                raise ValueError(f"vocabulary lacks the special token {token}")
        self.unk_token = unk_token
        self.max_chars_per_word = max_chars_per_word
        self.cls_id, self.sep_id, self.pad_id = self.vocab[CLS], self.vocab[SEP], self.vocab[PAD]

    @classmethod
    def from_file(cls, path: str | Path) -> "WordPieceTokenizer":
        """Tokenizer from a vocab.txt (one token per line; the line number is the id)."""
        lines = Path(path).read_text(encoding="utf-8").split("\n")
        if lines and lines[-1] == "":
            lines.pop()
        return cls([line.rstrip("\r") for line in lines])

    def _word_pieces(self, word: str) -> list[str]:
        """WordPiece split of one pre-token; the whole word becomes [UNK] if any part has no match."""
        if len(word) > self.max_chars_per_word:
            return [self.unk_token]
        pieces, start = [], 0
        while start < len(word):
            end, match = len(word), None
            while end > start:
                piece = word[start:end] if start == 0 else CONTINUATION + word[start:end]
                if piece in self.vocab:
                    match = piece
                    break
                end -= 1
            if match is None:
                return [self.unk_token]
            pieces.append(match)
            start = end
        return pieces

    def tokenize(self, text: str) -> list[str]:
        """Word-piece strings of `text`, without special tokens."""
        return [piece for word in pre_tokenize(normalize(text)) for piece in self._word_pieces(word)]

    def ids(self, text: str) -> list[int]:
        """Vocabulary ids of `text`'s word pieces, without special tokens."""
        return [self.vocab[piece] for piece in self.tokenize(text)]

    def encode(self, texts: str | Iterable[str], max_length: int) -> tuple[np.ndarray, np.ndarray]:
        """(input_ids, attention_mask), both int64 [N, max_length]: [CLS] pieces [SEP] then [PAD]=0.

        Longer texts are truncated to max_length-2 pieces so [SEP] is always kept.
        """
        if max_length < 2:
            raise ValueError(f"max_length must be >= 2 ([CLS] and [SEP]), got {max_length}")
        batch = [texts] if isinstance(texts, str) else list(texts)
        input_ids = np.full((len(batch), max_length), self.pad_id, dtype=np.int64)
        attention_mask = np.zeros((len(batch), max_length), dtype=np.int64)
        for row, text in enumerate(batch):
            ids = [self.cls_id, *self.ids(text)[: max_length - 2], self.sep_id]
            input_ids[row, : len(ids)] = ids
            attention_mask[row, : len(ids)] = 1
        return input_ids, attention_mask
