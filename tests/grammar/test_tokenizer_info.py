"""TokenizerInfo: the byte view of byte-level BPE and SentencePiece vocabularies."""

import json

import pytest

from lmlang.grammar import TokenizerInfo
from lmlang.grammar.tokenizer_info import gpt2_unicode_to_bytes

TEXTS = ["Hello, world!", "  two  spaces\tand\ttabs\n", 'json {"a": [1, 2.5e-3, null]}', "héllo wörld — ünïcode ✓ 你好"]


def test_gpt2_table_is_a_bijection_on_bytes():
    table = gpt2_unicode_to_bytes()
    assert sorted(table.values()) == list(range(256))
    assert table["Ġ"] == ord(" ") and table["Ċ"] == ord("\n") and table["a"] == ord("a")


@pytest.mark.parametrize("text", TEXTS)
def test_byte_level_tokens_concatenate_to_the_text(raw_tokenizer, info, text):
    ids = raw_tokenizer.encode(text).ids
    assert info.decode(ids) == text.encode("utf-8")


def test_specials_have_no_bytes_and_padding_columns_exist(raw_tokenizer, info):
    for special in ("<|endoftext|>", "<|im_start|>", "<|im_end|>"):
        assert info.token_bytes[raw_tokenizer.token_to_id(special)] is None
    assert info.vocab_size == 1030 and info.num_words == 33
    assert info.token_bytes[1024:] == [None] * 6
    assert info.eos_token_ids == (2,)


def test_transformers_tokenizer(tokenizer_dir):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tokenizer_dir)
    info = TokenizerInfo.from_huggingface(tok, vocab_size=1088)
    assert info.eos_token_ids == (tok.eos_token_id,)
    assert info.vocab_size == 1088
    text = "The answer is 42."
    assert info.decode(tok.encode(text, add_special_tokens=False)) == text.encode()


def test_sentencepiece_byte_fallback_and_space_marker():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers

    vocab = {"<unk>": 0, "<s>": 1, "</s>": 2, "<0x0A>": 3, "<0xC3>": 4, "<0xA9>": 5, "▁hello": 6, "▁": 7, "world": 8}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>", byte_fallback=True))
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    tok.decoder = decoders.Sequence([decoders.Replace("▁", " "), decoders.ByteFallback(), decoders.Fuse()])
    tok.add_special_tokens(["<s>", "</s>"])
    info = TokenizerInfo.from_huggingface(tok, eos_token_ids=[2])
    assert info.token_bytes[3] == b"\n" and info.token_bytes[4] == b"\xc3" and info.token_bytes[5] == b"\xa9"
    assert info.token_bytes[6] == b" hello" and info.token_bytes[7] == b" " and info.token_bytes[8] == b"world"
    assert info.token_bytes[1] is None and info.token_bytes[2] is None
    assert json.loads(tok.to_str())["model"]["byte_fallback"] is True


def test_bad_arguments_are_clear():
    with pytest.raises(ValueError, match="smaller than"):
        TokenizerInfo([b"a", b"b"], [0], vocab_size=1)
    with pytest.raises(ValueError, match="eos token id 5"):
        TokenizerInfo([b"a", b"b"], [5])
