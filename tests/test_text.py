"""The FLIP text tower and its tokenizers (models/text.py)."""

import json

import pytest
import torch

from tubelet.errors import ConfigError
from tubelet.models import create_model
from tubelet.models.text import ByteTokenizer, TextTransformer, get_tokenizer, trim_padding

torch.set_num_threads(1)


def _params(name: str, **kw) -> float:
    with torch.device("meta"):
        model = create_model(name, **kw)
    return sum(p.numel() for p in model.parameters()) / 1e6


@pytest.mark.parametrize("name,ref", [("text_base", 53), ("text_large", 109), ("text_huge", 334),
                                      ("vit_base_patch16_image", 86), ("vit_large_patch16_image", 303),
                                      ("vit_huge_patch14_image", 631)])
def test_tower_parameter_counts_match_flip_table_9(name, ref):
    # METHODS.md Sec. 6 (paper Table 9): the towers without their projections, in millions
    assert abs(_params(name) - ref) < 1.0, (name, _params(name))


def test_text_widths_are_the_papers():
    for name, (dim, depth, heads) in {"text_base": (512, 12, 8), "text_large": (768, 12, 12),
                                      "text_huge": (1024, 24, 16)}.items():
        with torch.device("meta"):
            m = create_model(name)
        assert (m.embed_dim, len(m.blocks), m.blocks[0].attn.num_heads, m.context_length) == (dim, depth, heads, 32)


def test_byte_tokenizer_pads_and_cuts():
    tok = ByteTokenizer(context_length=6)
    ids = tok(["ab", "abcdefgh"])
    assert ids.tolist() == [[98, 99, 0, 0, 0, 0], [98, 99, 100, 101, 102, 103]]
    assert tok("é").tolist() == [[0xC3 + 1, 0xA9 + 1, 0, 0, 0, 0]]
    with pytest.raises(ConfigError, match="text 1 is empty"):
        tok(["a", "  "])


def test_padding_changes_nothing():
    """The same caption padded to 12 and to 32 tokens gives the same feature; without the key-padding
    mask (padding attended to, as FLIP's JAX code does) it would not."""
    torch.manual_seed(0)
    model = TextTransformer(vocab_size=257, embed_dim=32, depth=2, num_heads=4).eval()
    tok = ByteTokenizer()
    short, long = tok("a red disc", context_length=12), tok("a red disc", context_length=32)
    a, b = model(short), model(long)
    assert torch.allclose(a, b, atol=1e-6), (a - b).abs().max()
    # the mask is what makes them equal: attending to the padding changes the feature
    model.pad_id = -1
    assert not torch.allclose(model(short), model(long), atol=1e-4)


def test_padding_mask_keeps_batch_rows_independent():
    torch.manual_seed(0)
    model = TextTransformer(vocab_size=257, embed_dim=32, depth=2, num_heads=4).eval()
    tok = ByteTokenizer()
    both = model(tok(["a red disc", "a much longer caption of a green square"]))
    alone = model(tok(["a red disc"], context_length=10))
    assert torch.allclose(both[0], alone[0], atol=1e-6)


def test_columns_padded_in_every_row_are_not_computed():
    """A batch of short captions is cut to its longest caption before the blocks (the padding they
    would see is masked out anyway): the same features, at the cost of 14 positions, not 32."""
    torch.manual_seed(0)
    model = TextTransformer(vocab_size=257, embed_dim=32, depth=2, num_heads=4).eval()
    ids = ByteTokenizer(32)(["a red disc", "a green square"])  # 10 and 14 bytes
    seen = []
    hook = model.blocks[0].register_forward_pre_hook(lambda m, args: seen.append(args[0].shape[1]))
    try:
        out = model(ids)
    finally:
        hook.remove()
    assert seen == [14]
    assert torch.allclose(out, model.forward_features(ids)[:, 0], atol=1e-6)  # every column, masked
    full = torch.full((2, 32), 5, dtype=torch.long)  # no padding: nothing cut
    assert trim_padding(full, 0) is full and trim_padding(torch.zeros(2, 8, dtype=torch.long), 0).shape == (2, 1)


def test_grad_checkpointing_keeps_values_and_gradients_and_saves_less():
    from tubelet.flops import saved_for_backward

    ids = ByteTokenizer(32)(["a red disc moves left", "a green square"])
    out, grads, saved = {}, {}, {}
    for ckpt in (False, True):
        torch.manual_seed(0)
        model = TextTransformer(vocab_size=257, embed_dim=32, depth=3, num_heads=4, grad_checkpointing=ckpt)
        out[ckpt] = model(ids)
        out[ckpt].square().sum().backward()
        grads[ckpt] = torch.cat([p.grad.flatten() for p in model.parameters()])
        saved[ckpt] = saved_for_backward(model, ids).activations
    assert torch.allclose(out[False], out[True], atol=1e-6) and torch.allclose(grads[False], grads[True], atol=1e-5)
    assert saved[True] < saved[False] / 3, saved  # the blocks' inputs only, not what is inside them


def test_wordpiece_from_a_vocab_file(tmp_path):
    vocab = ["[PAD]", "[UNK]", "a", "red", "disc", "move", "##s", "left", "."]
    path = tmp_path / "vocab.txt"
    path.write_text("\n".join(vocab) + "\n")
    tok = get_tokenizer("wordpiece", str(path), context_length=8)
    assert tok.vocab_size == len(vocab) and tok.pad_id == 0
    # lower-cased, accents stripped, no [CLS]/[SEP]: position 0 is the first word-piece (FLIP's code)
    ids = tok(["A Réd disc moves left.", "a blue disc"])
    assert ids.tolist() == [[2, 3, 4, 5, 6, 7, 8, 0], [2, 1, 4, 0, 0, 0, 0, 0]]


def test_wordpiece_needs_its_file_and_tokens(tmp_path):
    with pytest.raises(ConfigError, match="tokenizer 'wordpiece' needs vocab_file"):
        get_tokenizer("wordpiece")
    with pytest.raises(ConfigError, match="vocab_file=.*nope.txt: file not found"):
        get_tokenizer("wordpiece", str(tmp_path / "nope.txt"))
    bad = tmp_path / "vocab.txt"
    bad.write_text("[UNK]\na\n")
    with pytest.raises(ConfigError, match=r"vocab.txt: the vocabulary has no '\[PAD\]' token"):
        get_tokenizer("wordpiece", str(bad))
    with pytest.raises(ConfigError, match="unknown tokenizer 'sentencepiece'; known: bytes, wordpiece, bpe, json"):
        get_tokenizer("sentencepiece")


def test_clip_bpe_from_vocab_and_merges(tmp_path):
    """CLIP's BPE layout (vocab.json + merges.txt, '</w>' word ends, byte-level symbols), built here by
    the tokenizers library's trainer; get_tokenizer wraps texts in start/end tokens and pads with its
    own id, after the vocabulary."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers

    t = Tokenizer(models.BPE(end_of_word_suffix="</w>"))
    t.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(),
                                               pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    trainer = trainers.BpeTrainer(vocab_size=300, special_tokens=["<|startoftext|>", "<|endoftext|>"],
                                  end_of_word_suffix="</w>", initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    t.train_from_iterator(["a red disc moves left", "a green square moves right"] * 20, trainer)
    vocab_file, merges_file = t.model.save(str(tmp_path))
    vocab = json.loads(open(vocab_file).read())
    tok = get_tokenizer("bpe", vocab_file, merges_file, context_length=8)
    ids = tok(["A red disc", "a red disc moves left and right"]).tolist()
    sot, eot, pad = vocab["<|startoftext|>"], vocab["<|endoftext|>"], tok.pad_id
    assert pad == len(vocab) and tok.vocab_size == len(vocab) + 1
    assert ids[0] == [sot, vocab["a</w>"], vocab["red</w>"], vocab["disc</w>"], eot, pad, pad, pad]
    assert ids[1][0] == sot and ids[1][-1] == eot and pad not in ids[1]  # cut to 8, still ended


def test_text_tower_rejects_ids_outside_its_vocabulary():
    model = TextTransformer(vocab_size=10, embed_dim=16, depth=1, num_heads=2)
    with pytest.raises(ValueError, match="token id 12 is outside the vocabulary of 10"):
        model(torch.tensor([[1, 12]]))
    with pytest.raises(ValueError, match="33 tokens exceed the text tower's context length 32"):
        model(torch.ones(1, 33, dtype=torch.long))
