"""Tests for plotarmour.tokenizer on a tiny tokenizer trained here (no network)."""

import gzip
import random

import pytest

from plotarmour.tokenizer import (
    EOT,
    IncrementalDetokenizer,
    eot_id,
    fingerprint,
    load_tokenizer,
    save_tokenizer,
    train_tokenizer,
    train_tokenizer_from_iterator,
)

ASCII = "Once upon a time, a little dragon named Tim wanted to fly.\n\nThe end!"
ACCENTED = "café naïve Ærøskøbing"
CJK = "你好，世界。日本語"
EMOJI = "🐉🔥👍🏽 family 👨‍👩‍👧"
SAMPLES = [ASCII, ACCENTED, CJK, EMOJI, ASCII + " " + EMOJI + " " + CJK]


def make_corpus(n=300, seed=0):
    """A few hundred short stories; the non-ASCII words are frequent enough to merge."""
    rng = random.Random(seed)
    names = ["Tim", "Lily", "Sam", "Mia", "Ben"]
    things = ["dragon", "cat", "ball", "tree", "boat", "cake"]
    verbs = ["saw", "liked", "found", "lost", "made"]
    extra = ["café", "naïve", "Ærøskøbing", "你好", "世界", "🐉", "🔥"]
    stories = []
    for _ in range(n):
        s = f"{rng.choice(names)} {rng.choice(verbs)} a {rng.choice(things)}."
        if rng.random() < 0.3:
            s += f" It was {rng.choice(extra)}!"
        stories.append(s)
    return stories


@pytest.fixture(scope="module")
def tok():
    return train_tokenizer_from_iterator(make_corpus(), vocab_size=400)


def stream(tok, ids, **kw):
    d = IncrementalDetokenizer(tok, **kw)
    pieces = [d.push(i) for i in ids]
    return pieces, d.flush()


@pytest.mark.parametrize("text", SAMPLES)
def test_round_trip(tok, text):
    assert tok.decode(tok.encode(text).ids) == text


def test_all_bytes_in_vocab(tok):
    assert tok.get_vocab_size() >= 257
    # Characters never seen in training still round-trip via byte tokens.
    text = "Ωμέγα ☃ 𝔘𝔫𝔦𝔠𝔬𝔡𝔢 \x00\x7f"
    assert tok.decode(tok.encode(text).ids) == text


def test_incremental_detokenizer(tok):
    held_back = False
    for text in SAMPLES:
        ids = tok.encode(text).ids
        pieces, tail = stream(tok, ids)
        assert "".join(pieces) + tail == tok.decode(ids) == text
        assert all("\ufffd" not in p for p in pieces + [tail])
        # A token that completed nothing means text was held back
        # (multi-token characters); make sure the test exercises that.
        held_back |= "" in pieces
        # Each push decodes only a small window, not the whole story.
        d = IncrementalDetokenizer(tok)
        for i in ids:
            d.push(i)
            assert len(d._ids) <= 12
    assert held_back


def test_incremental_with_prompt_and_eot(tok):
    prompt = tok.encode("Tim saw a").ids
    gen = tok.encode(" dragon 🐉." + EOT + "Lily").ids
    pieces, tail = stream(tok, gen, prompt_ids=prompt)
    assert "".join(pieces) + tail == tok.decode(prompt + gen)[len("Tim saw a"):]
    assert "".join(pieces) + tail == " dragon 🐉.Lily"


def test_emoji_split_into_byte_tokens(tok):
    # 👨‍👩‍👧 is unseen in training: it must be spelled with byte tokens that each
    # carry part of a character, so naive per-token decoding shows U+FFFD.
    ids = tok.encode("👨‍👩‍👧").ids
    assert any("\ufffd" in tok.decode([i]) for i in ids)
    pieces, tail = stream(tok, ids)
    assert "".join(pieces) + tail == "👨‍👩‍👧"
    assert all("\ufffd" not in p for p in pieces)


def test_flush_returns_incomplete_tail(tok):
    ids = tok.encode("ok 🐉").ids
    d = IncrementalDetokenizer(tok)
    out = "".join(d.push(i) for i in ids[:-1])  # stop before the char completes
    assert tok.decode(ids[:-1]).startswith(out)
    assert out + d.flush() == tok.decode(ids[:-1])


def test_eot(tok):
    i = eot_id(tok)
    assert tok.token_to_id(EOT) == i
    enc = tok.encode("The end." + EOT + "Once")
    assert enc.ids.count(i) == 1
    assert tok.encode(EOT).ids == [i]


def test_save_load_fingerprint(tok, tmp_path):
    fp = fingerprint(tok)
    assert len(fp) == 64
    p = save_tokenizer(tok, tmp_path / "tk")
    assert p == tmp_path / "tk" / "tokenizer.json"
    for spec in (tmp_path / "tk", p, str(p)):
        again = load_tokenizer(spec)
        assert fingerprint(again) == fp
        assert again.encode(EMOJI).ids == tok.encode(EMOJI).ids
    # A different vocabulary gives a different fingerprint.
    other = train_tokenizer_from_iterator(make_corpus(seed=1), vocab_size=350)
    assert fingerprint(other) != fp


def test_train_from_files_plain_and_gz(tmp_path):
    stories = make_corpus(100)
    body = "".join(s + "\n" + EOT + "\n" for s in stories)
    plain = tmp_path / "a.txt"
    plain.write_text(body, encoding="utf-8")
    gz = tmp_path / "b.txt.gz"
    with gzip.open(gz, "wt", encoding="utf-8") as f:
        f.write(body)
    t = train_tokenizer([plain, gz], vocab_size=300)
    assert eot_id(t) == 0
    assert t.decode(t.encode(CJK).ids) == CJK
    # The separator lines are not learnt as ordinary text.
    learnt = [v for v in t.get_vocab() if v != EOT]
    assert not any("endof" in v or "<|" in v for v in learnt)


def test_load_errors(tok, tmp_path):
    missing = tmp_path / "nope" / "tokenizer.json"
    with pytest.raises(FileNotFoundError, match="nope"):
        load_tokenizer(missing)
    with pytest.raises(FileNotFoundError, match="nope"):
        load_tokenizer(str(tmp_path / "nope"))  # absolute path: never sent to the hub
    with pytest.raises(FileNotFoundError, match="nope"):
        load_tokenizer("./nope/tokenizer.json")

    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(FileNotFoundError, match="tokenizer.json"):
        load_tokenizer(empty)

    bad = tmp_path / "bad.json"
    bad.write_text("{not json", encoding="utf-8")
    with pytest.raises(ValueError, match="bad.json"):
        load_tokenizer(bad)

    wrong = tmp_path / "wrong.json"
    wrong.write_text('{"hello": 1}', encoding="utf-8")
    with pytest.raises(ValueError, match="wrong.json"):
        load_tokenizer(wrong)


def test_load_requires_eot(tmp_path):
    from tokenizers import Tokenizer, models

    t = Tokenizer(models.BPE())
    t.add_tokens(["a"])
    save_tokenizer(t, tmp_path)
    with pytest.raises(ValueError, match="endoftext"):
        load_tokenizer(tmp_path)
