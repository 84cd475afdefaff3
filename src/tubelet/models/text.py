"""The text tower of FLIP (Li et al., arXiv 2212.00794, Sec. 3 and Table 9) and its tokenizers.

A *non-autoregressive* Transformer encoder (no causal mask, unlike CLIP's): token embedding plus
learned positions over a context of 32 tokens, pre-norm blocks (the ViT's ``Block``), a final
LayerNorm, and the output at position 0 as the caption's feature. Padded positions are removed by a
key-padding mask, so a caption padded to any length gives the same feature. FLIP's JAX code has no
padding mask (padded tokens are attended to) and adds no [CLS]: position 0 is the caption's first
word-piece, whose output attends to the whole caption (METHODS.md Sec. 6 "Text pooling").

Variants (width x depth, heads; vocabulary 30522, BERT uncased): ``text_base`` 512 x 12, 8 heads
(53M parameters, FLIP B/16), ``text_large`` 768 x 12, 12 heads (109M, L/16), ``text_huge`` 1024 x 24,
16 heads (334M, H/14).

Tokenizers (``get_tokenizer``), all offline:

- ``bytes`` (default, no file): UTF-8 bytes, id = byte + 1, 0 = padding (vocabulary 257);
- ``wordpiece``: BERT's WordPiece from a ``vocab.txt`` (lower-cased, accents stripped, BERT's
  pre-tokenizer), no [CLS]/[SEP] added, as FLIP's code;
- ``bpe``: CLIP's byte-level BPE from ``vocab.json`` + ``merges.txt`` (CLIP's split pattern, lower-cased,
  ``</w>`` word ends), wrapped in ``<|startoftext|>`` ... ``<|endoftext|>`` as CLIP does;
- ``json``: any ``tokenizer.json`` of the ``tokenizers`` library, used as it is.

A tokenizer is called like open_clip's: ``tokenizer(texts) -> LongTensor (B, context_length)``, padded
with ``tokenizer.pad_id`` and cut at ``context_length``.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any, Literal, Sequence

import numpy as np
import torch
from torch import nn
from torch.utils.checkpoint import checkpoint

from tubelet.errors import ConfigError
from tubelet.models.registry import register_model
from tubelet.models.vit import Block, init_linear_and_norm

__all__ = ["FLIP_TEMPLATES", "ByteTokenizer", "FileTokenizer", "TextConfig", "TextTransformer", "TOKENIZER_KINDS", "get_tokenizer",
           "trim_padding"]

TokenizerKind = Literal["bytes", "wordpiece", "bpe", "json"]
TOKENIZER_KINDS = ("bytes", "wordpiece", "bpe", "json")
# CLIP's pre-tokenizer split (open_clip's SimpleTokenizer), as a pattern of the tokenizers library.
# The 7 of CLIP's 80 ImageNet templates that FLIP's zero-shot uses (CLIP's prompt-engineering notebook).
FLIP_TEMPLATES = (
    "itap of a {}.",
    "a bad photo of the {}.",
    "a origami {}.",
    "a photo of the large {}.",
    "a {} in a video game.",
    "art of the {}.",
    "a photo of the small {}.",
)
CLIP_SPLIT = r"""<\|startoftext\|>|<\|endoftext\|>|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""


def _check_texts(texts: str | Sequence[str]) -> list[str]:
    items = [texts] if isinstance(texts, str) else list(texts)
    for i, t in enumerate(items):
        if not isinstance(t, str):
            raise ConfigError(f"text {i} is a {type(t).__name__}, not a string")
        if not t.strip():
            raise ConfigError(f"text {i} is empty: every caption and prompt needs at least one word")
    return items


class ByteTokenizer:
    """UTF-8 bytes as tokens: id = byte + 1, ``pad_id`` 0; needs no vocabulary file."""

    kind = "bytes"
    pad_id = 0
    vocab_size = 257

    def __init__(self, context_length: int = 32) -> None:
        if context_length < 1:
            raise ConfigError(f"context_length must be at least 1, got {context_length}")
        self.context_length = int(context_length)

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        items = _check_texts(texts)
        length = int(context_length or self.context_length)
        out = np.zeros((len(items), length), dtype=np.int64)
        for row, text in enumerate(items):
            ids = np.frombuffer(text.encode("utf-8")[:length], dtype=np.uint8)
            out[row, : ids.size] = ids.astype(np.int64) + 1
        return torch.from_numpy(out)


class FileTokenizer:
    """A tokenizer of the ``tokenizers`` library (WordPiece, BPE, or a ``tokenizer.json``) with padding
    and truncation to ``context_length``; ``bos``/``eos`` tokens wrap every text when given."""

    def __init__(self, tokenizer: Any, kind: str, pad_id: int, context_length: int = 32,
                 bos_id: int | None = None, eos_id: int | None = None, source: str = "") -> None:
        if context_length < 1 + (bos_id is not None) + (eos_id is not None):
            raise ConfigError(f"context_length {context_length} leaves no room for a token")
        self.tokenizer = tokenizer
        self.kind = kind
        self.pad_id = int(pad_id)
        self.bos_id, self.eos_id = bos_id, eos_id
        self.context_length = int(context_length)
        self.vocab_size = int(tokenizer.get_vocab_size(with_added_tokens=True))
        self.source = source

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        items = _check_texts(texts)
        length = int(context_length or self.context_length)
        room = length - (self.bos_id is not None) - (self.eos_id is not None)
        encoded = self.tokenizer.encode_batch(items, add_special_tokens=False)
        out = torch.full((len(items), length), self.pad_id, dtype=torch.long)
        for row, enc in enumerate(encoded):
            ids = list(enc.ids[:room])
            if not ids:
                raise ConfigError(f"text {row} ('{items[row][:40]}') has no token in the vocabulary of {self.source}")
            if self.bos_id is not None:
                ids.insert(0, self.bos_id)
            if self.eos_id is not None:
                ids.append(self.eos_id)
            out[row, : len(ids)] = torch.tensor(ids, dtype=torch.long)
        return out


def _need_file(kind: str, key: str, path: str | None) -> Path:
    if not path:
        raise ConfigError(f"tokenizer '{kind}' needs {key} (a vocabulary file); the 'bytes' tokenizer needs none")
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"{key}={path}: file not found (tokenizer '{kind}')")
    return p


def _token_id(vocab: dict[str, int], token: str, path: Path) -> int:
    if token not in vocab:
        raise ConfigError(f"{path}: the vocabulary has no '{token}' token, which tokenizer needs")
    return int(vocab[token])


def get_tokenizer(kind: str = "bytes", vocab_file: str | None = None, merges_file: str | None = None,
                  context_length: int = 32) -> ByteTokenizer | FileTokenizer:
    """The tokenizer ``kind`` (see the module docstring) padding and cutting to ``context_length``.

    ``wordpiece``: ``vocab_file`` is BERT's ``vocab.txt`` (one token per line, with ``[PAD]`` and ``[UNK]``).
    ``bpe``: ``vocab_file`` is CLIP's ``vocab.json`` and ``merges_file`` its ``merges.txt`` (or
    ``bpe_simple_vocab_16e6.txt``). ``json``: ``vocab_file`` is a ``tokenizer.json``.
    """
    if kind not in TOKENIZER_KINDS:
        raise ConfigError(f"unknown tokenizer '{kind}'; known: {', '.join(TOKENIZER_KINDS)}")
    if kind == "bytes":
        return ByteTokenizer(context_length)
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers

    if kind == "wordpiece":
        path = _need_file(kind, "vocab_file", vocab_file)
        vocab = {line.rstrip("\n"): i for i, line in enumerate(path.read_text(encoding="utf-8").splitlines())}
        pad = _token_id(vocab, "[PAD]", path)
        _token_id(vocab, "[UNK]", path)
        tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
        tok.normalizer = normalizers.BertNormalizer(clean_text=True, handle_chinese_chars=True,
                                                    strip_accents=True, lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        return FileTokenizer(tok, kind, pad, context_length, source=str(path))
    if kind == "bpe":
        vpath = _need_file(kind, "vocab_file", vocab_file)
        mpath = _need_file(kind, "merges_file", merges_file)
        try:
            vocab = json.loads(vpath.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{vpath}: not a BPE vocab.json ({exc.msg})") from None
        bos = _token_id(vocab, "<|startoftext|>", vpath)
        eos = _token_id(vocab, "<|endoftext|>", vpath)
        try:
            model = models.BPE.from_file(str(vpath), str(mpath), end_of_word_suffix="</w>")
        except Exception as exc:  # the library's own error type is not exported
            raise ConfigError(f"{vpath} / {mpath}: not a BPE vocabulary and merges pair ({exc})") from None
        tok = Tokenizer(model)
        tok.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Replace(Regex(r"\s+"), " "),
                                               normalizers.Lowercase()])
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(CLIP_SPLIT), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
        # open_clip pads with 0, the id of '!', which a caption can hold too; the text tower finds padding
        # by its id, so it gets one of its own after the vocabulary (CLIP's 49408 -> 49409 ids).
        tok.add_special_tokens(["<|pad|>"])
        pad = tok.token_to_id("<|pad|>")
        return FileTokenizer(tok, kind, pad, context_length, bos_id=bos, eos_id=eos, source=str(vpath))
    path = _need_file(kind, "vocab_file", vocab_file)
    try:
        tok = Tokenizer.from_file(str(path))
    except Exception as exc:
        raise ConfigError(f"{path}: not a tokenizer.json of the tokenizers library ({exc})") from None
    pad = tok.padding["pad_id"] if tok.padding else tok.token_to_id("[PAD]") or tok.token_to_id("<pad>")
    if pad is None:
        raise ConfigError(f"{path}: the tokenizer names no padding token ([PAD] or <pad>)")
    return FileTokenizer(tok, kind, int(pad), context_length, source=str(path))


@dataclass(frozen=True)
class TextConfig:
    """One text-tower variant. ``vocab_size`` must match the tokenizer (FLIP's method sets it from the
    tokenizer it builds); ``pad_id`` is the tokenizer's padding id, masked out of attention."""

    vocab_size: int = 30522
    context_length: int = 32
    embed_dim: int = 512
    depth: int = 12
    num_heads: int = 8
    mlp_ratio: float = 4.0
    pad_id: int = 0
    norm_eps: float = 1e-6
    pos_init_std: float = 0.01  # CLIP's init of the learned positions
    token_init_std: float = 0.02
    # recompute each block in backward: the tower then keeps only its blocks' inputs for backward, at the
    # cost of a second forward of the tower (the text tower's activations do not shrink with masking)
    grad_checkpointing: bool = False


class TextTransformer(nn.Module):
    """``ids (B, L) -> feature (B, embed_dim)``, ``L <= context_length``: the output at position 0 of a
    non-autoregressive pre-norm Transformer, with padded keys (``ids == pad_id``) masked out."""

    def __init__(self, cfg: TextConfig | None = None, **overrides: Any) -> None:
        super().__init__()
        cfg = dataclasses.replace(cfg or TextConfig(), **overrides)
        self.cfg = cfg
        self.embed_dim = cfg.embed_dim
        self.pad_id = cfg.pad_id
        self.context_length = cfg.context_length
        self.token_embed = nn.Embedding(cfg.vocab_size, cfg.embed_dim)
        self.pos_embed = nn.Parameter(torch.zeros(1, cfg.context_length, cfg.embed_dim))
        norm = partial(nn.LayerNorm, eps=cfg.norm_eps)
        self.blocks = nn.ModuleList(
            Block(cfg.embed_dim, cfg.num_heads, cfg.mlp_ratio, qkv_bias=True, norm_layer=norm) for _ in range(cfg.depth)
        )
        self.norm = norm(cfg.embed_dim)
        self.grad_checkpointing = cfg.grad_checkpointing
        init_linear_and_norm(self.modules())
        nn.init.normal_(self.token_embed.weight, std=cfg.token_init_std)
        nn.init.normal_(self.pos_embed, std=cfg.pos_init_std)

    def no_weight_decay(self) -> set[str]:
        return {"pos_embed"}

    def padding_mask(self, ids: torch.Tensor) -> torch.Tensor | None:
        """``(B, 1, 1, L)`` bool, True = a real token (attend); None when nothing is padded."""
        real = ids != self.pad_id
        if torch.compiler.is_exporting():  # a graph cannot branch on values: always the mask (same outputs)
            return real[:, None, None, :]
        if bool(real.all()):
            return None
        return real[:, None, None, :]

    def forward_features(self, ids: torch.Tensor) -> torch.Tensor:
        """``(B, L) -> (B, L, D)`` normed outputs; outputs at padded positions are not meaningful."""
        if ids.ndim != 2 or ids.dtype != torch.long:
            raise ValueError(f"token ids must be a LongTensor (B, L), got {ids.dtype} {tuple(ids.shape)}")
        L = ids.shape[1]
        if L > self.context_length:
            raise ValueError(f"{L} tokens exceed the text tower's context length {self.context_length}")
        # the check reads a value, which an exported graph cannot branch on (its gather then fails instead)
        if (ids.device.type == "cpu" and ids.numel() and not torch.compiler.is_exporting()
                and int(ids.max()) >= self.token_embed.num_embeddings):
            raise ValueError(f"token id {int(ids.max())} is outside the vocabulary of {self.token_embed.num_embeddings}"
                             " (tokenizer and text tower disagree)")
        mask = self.padding_mask(ids)
        x = self.token_embed(ids) + self.pos_embed[:, :L].to(self.token_embed.weight.dtype)
        use_ckpt = self.grad_checkpointing and torch.is_grad_enabled()
        for blk in self.blocks:
            x = checkpoint(blk, x, mask, use_reentrant=False) if use_ckpt else blk(x, mask)
        return self.norm(x)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.grad_checkpointing = enable

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.forward_features(trim_padding(ids, self.pad_id))[:, 0]


def trim_padding(ids: torch.Tensor, pad_id: int) -> torch.Tensor:
    """``ids`` without the trailing columns that are padding in every row (at least one column kept).

    Padded keys are masked out of attention and padded outputs are never pooled, so these columns
    change no feature; dropping them saves their compute and the activations autograd keeps for them
    (a batch of short captions padded to the context would otherwise cost the full context).
    """
    if ids.ndim != 2 or ids.shape[1] <= 1 or torch.compiler.is_exporting():
        return ids  # exported: the length would depend on values; the untrimmed columns change no feature
    used = (ids != pad_id).any(dim=0)  # (L,) a column holding a real token in some row
    length = max(1, int(used.nonzero().max()) + 1) if bool(used.any()) else 1
    return ids if length == ids.shape[1] else ids[:, :length]


def _text(dim: int, depth: int, heads: int) -> TextConfig:
    return TextConfig(embed_dim=dim, depth=depth, num_heads=heads)


@register_model("text_base", _text(512, 12, 8), "FLIP text tower B (512 x 12, 8 heads), context 32")
@register_model("text_large", _text(768, 12, 12), "FLIP text tower L (768 x 12, 12 heads), context 32")
@register_model("text_huge", _text(1024, 24, 16), "FLIP text tower H (1024 x 24, 16 heads), context 32")
def build_text(cfg: TextConfig) -> TextTransformer:
    return TextTransformer(cfg)
