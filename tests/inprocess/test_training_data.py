"""training.prepare and training.data: the tokens written are exactly the tokens read back,
memory-mapped read-only; every bad input is reported by name."""

from __future__ import annotations

import gzip
import json
import socket

import numpy as np
import pytest
from corpus import make_corpus

from plotarmour.tokenizer import EOT, eot_id, fingerprint
from training.data import DataError, RandomWindows, eval_windows, open_tokens, read_meta
from training.prepare import PrepareError, download_tinystories, iter_pieces, prepare, token_dtype


def expected_tokens(tok, text: str) -> list[int]:
    """What prepare should write: each story, stripped, then end-of-text."""
    out = []
    for story in text.split(f"\n{EOT}\n"):
        if story.strip():
            out += tok.encode(story.strip(), add_special_tokens=False).ids + [eot_id(tok)]
    return out


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, tiny_tokenizer):
    root = tmp_path_factory.mktemp("prep")
    train, val = make_corpus(120, seed=1), make_corpus(30, seed=2)
    (root / "train.txt").write_text(train, encoding="utf-8")
    with gzip.open(root / "val.txt.gz", "wt", encoding="utf-8") as fh:
        fh.write(val)
    tok_path = root / "tok.json"
    tiny_tokenizer.save(str(tok_path))
    meta = prepare([root / "train.txt"], root / "out", [root / "val.txt.gz"], tokenizer=str(tok_path), quiet=True)
    return root, meta, train, val


def test_memmap_returns_exactly_the_tokens_written(prepared, tiny_tokenizer):
    root, meta, train, val = prepared
    out = root / "out"
    got_train = open_tokens(out / "train.bin")
    got_val = open_tokens(out / "val.bin")  # from a .gz source
    assert got_train.dtype == np.uint16 and isinstance(got_train, np.memmap)
    assert got_train.tolist() == expected_tokens(tiny_tokenizer, train)
    assert got_val.tolist() == expected_tokens(tiny_tokenizer, val)
    assert meta["splits"]["train"]["tokens"] == len(got_train)
    assert meta["splits"]["train"]["stories"] == 120 and meta["splits"]["val"]["stories"] == 30
    assert read_meta(out)["tokenizer_fingerprint"] == fingerprint(tiny_tokenizer)


def test_memmap_is_read_only(prepared):
    tokens = open_tokens(prepared[0] / "out" / "train.bin")
    with pytest.raises(ValueError):
        tokens[0] = 1


def test_random_windows_are_slices_shifted_by_one(prepared):
    tokens = open_tokens(prepared[0] / "out" / "train.bin")
    sampler = RandomWindows(tokens, block_size=16, batch_size=4, seed=3)
    x, y = sampler.batch(7)
    assert x.shape == y.shape == (4, 16)
    assert (x[:, 1:] == y[:, :-1]).all()
    flat = tokens.tolist()
    for row in range(4):
        xs = x[row].tolist()
        starts = [s for s in range(len(flat) - 16) if flat[s : s + 16] == xs]
        assert starts and flat[starts[0] + 16] == int(y[row, -1])
    again, _ = RandomWindows(tokens, 16, 4, seed=3).batch(7)
    assert (again == x).all()  # a pure function of (seed, rank, index): resumable
    other, _ = RandomWindows(tokens, 16, 4, seed=3, rank=1).batch(7)
    assert not (other == x).all()


def test_eval_windows_tile_without_overlap():
    tokens = np.arange(1000)
    assert eval_windows(tokens, 100) == [i * 100 for i in range(9)]  # 9 windows of 101 fit in 1000
    assert len(eval_windows(tokens, 10, max_windows=5)) == 5


def test_held_out_every_kth_story_without_val_files(tmp_path, tiny_tokenizer):
    (tmp_path / "t.txt").write_text(make_corpus(50), encoding="utf-8")
    tiny_tokenizer.save(str(tmp_path / "tok.json"))
    meta = prepare([tmp_path / "t.txt"], tmp_path / "o", tokenizer=str(tmp_path / "tok.json"), val_every=10, quiet=True)
    assert meta["splits"]["val"]["stories"] == 5 and meta["splits"]["train"]["stories"] == 45


def test_trains_its_own_tokenizer(tmp_path):
    (tmp_path / "t.txt").write_text(make_corpus(80), encoding="utf-8")
    meta = prepare([tmp_path / "t.txt"], tmp_path / "o", vocab_size=300, val_every=8, quiet=True)
    assert meta["vocab_size"] == 300 and (tmp_path / "o" / "tokenizer.json").is_file()


def test_token_dtype_widens_for_big_vocabularies():
    assert token_dtype(4096) == np.uint16
    assert token_dtype(65536) == np.uint16  # ids 0..65535
    assert token_dtype(65537) == np.uint32
    with pytest.raises(ValueError):
        token_dtype(0)


def test_progress_counts_every_byte(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text(make_corpus(300), encoding="utf-8")
    seen = []
    pieces = list(iter_pieces(path, seen.append))
    assert sum(seen) == path.stat().st_size
    assert len(pieces) == 300 and all(ends for _, ends in pieces)


# -- bad input ---------------------------------------------------------------------------


@pytest.mark.parametrize("kind, message", [
    ("missing", "not found"), ("empty", "is empty"), ("directory", "not a regular file"),
    ("latin1", "not valid UTF-8 at line 2"), ("blank", "contains no text"), ("badgz", "cannot read"),
])
def test_bad_input_names_the_file(tmp_path, tiny_tokenizer, kind, message):
    path = tmp_path / ("in.txt.gz" if kind == "badgz" else "in.txt")
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "directory":
        path.mkdir()
    elif kind == "latin1":
        path.write_bytes("Once upon a time.\nCaf\u00e9 au lait.\n".encode("latin-1"))
    elif kind == "blank":
        path.write_text(f"\n  \n{EOT}\n\n", encoding="utf-8")
    elif kind == "badgz":
        path.write_bytes(b"\x1f\x8b\x08\x00 this is not really gzip")
    tiny_tokenizer.save(str(tmp_path / "tok.json"))
    with pytest.raises(PrepareError, match=message) as err:
        prepare([path], tmp_path / "out", tokenizer=str(tmp_path / "tok.json"), quiet=True)
    assert "in.txt" in str(err.value)
    assert not list((tmp_path / "out").glob("*.bin")) if (tmp_path / "out").exists() else True


def test_non_utf8_also_fails_tokenizer_training(tmp_path):
    path = tmp_path / "in.txt"
    path.write_bytes(b"\xff\xfe broken\n")
    with pytest.raises(PrepareError, match="in.txt: not valid UTF-8 at line 1"):
        prepare([path], tmp_path / "out", vocab_size=300, quiet=True)


def test_token_file_errors(tmp_path):
    with pytest.raises(DataError, match="not found"):
        open_tokens(tmp_path / "nope.bin", "uint16")
    odd = tmp_path / "odd.bin"
    odd.write_bytes(b"\x01\x02\x03")
    with pytest.raises(DataError, match="odd.bin: 3 bytes"):
        open_tokens(odd, "uint16")
    with pytest.raises(DataError, match="meta.json: missing"):
        read_meta(tmp_path)
    (tmp_path / "meta.json").write_text(json.dumps({"format": "other"}))
    with pytest.raises(DataError, match="format"):
        read_meta(tmp_path)
    with pytest.raises(DataError, match="fewer than block_size"):
        RandomWindows(np.arange(10, dtype=np.uint16), block_size=10, batch_size=1)


def test_hub_download_fails_fast_offline(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(PrepareError, match="HF_HUB_OFFLINE"):
        download_tinystories(tmp_path)
    monkeypatch.delenv("HF_HUB_OFFLINE")

    def no_network(*args, **kwargs):
        raise OSError("network is unreachable")

    monkeypatch.setattr(socket, "create_connection", no_network)
    with pytest.raises(PrepareError, match="offline"):
        download_tinystories(tmp_path)
