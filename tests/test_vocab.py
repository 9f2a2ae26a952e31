import json

import pytest

from showtell.vocab import END_ID, PAD_ID, SPECIALS, START_ID, UNK_ID, Vocabulary, tokenize


def test_tokenize_lowercases_strips_punctuation():
    assert tokenize('A dog\'s ball, "red"; black-and-white!') == ["a", "dogs", "ball", "red", "black", "and", "white"]
    assert tokenize("  ") == []
    assert tokenize("Two  dogs\tplay.") == ["two", "dogs", "play"]


def test_special_ids_fixed():
    vocab = Vocabulary.build(["a dog"], min_count=1)
    assert vocab.itos[:4] == list(SPECIALS)
    assert (PAD_ID, START_ID, END_ID, UNK_ID) == (0, 1, 2, 3)


def test_min_count_and_order():
    caps = ["a dog runs", "a dog sits", "a cat"]
    vocab = Vocabulary.build(caps, min_count=2)
    assert vocab.itos[4:] == ["a", "dog"]  # by count, ties alphabetical
    assert "cat" not in vocab
    assert Vocabulary.build(caps, min_count=1).itos[4:] == ["a", "dog", "cat", "runs", "sits"]
    with pytest.raises(ValueError, match="min_count"):
        Vocabulary.build(caps, min_count=0)


def test_encode_decode_roundtrip():
    vocab = Vocabulary.build(["a dog runs on the grass"] * 5, min_count=5)
    ids = vocab.encode("A dog runs on the grass.")
    assert ids[0] == START_ID and ids[-1] == END_ID
    assert vocab.decode(ids) == ["a", "dog", "runs", "on", "the", "grass"]
    assert vocab.encode("a zebra", add_special=False) == [vocab.stoi["a"], UNK_ID]
    assert vocab.decode([START_ID, vocab.stoi["dog"], PAD_ID, END_ID, vocab.stoi["a"]]) == ["dog"]


def test_json_roundtrip(tmp_path):
    vocab = Vocabulary.build(["a dog", "a cat", "a dog"], min_count=1)
    path = tmp_path / "vocab.json"
    vocab.save(path)
    assert json.loads(path.read_text())["itos"][:4] == list(SPECIALS)  # plain JSON, never pickle
    assert Vocabulary.load(path) == vocab
    assert Vocabulary.from_dict(json.loads(json.dumps(vocab.to_dict()))) == vocab


def test_bad_vocab_rejected():
    with pytest.raises(ValueError, match="special tokens"):
        Vocabulary(["a", "b"])
    with pytest.raises(ValueError, match="duplicate"):
        Vocabulary([*SPECIALS, "a", "a"])
