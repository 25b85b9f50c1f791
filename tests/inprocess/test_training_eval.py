"""evaluate's pure parts: position bands and the bytes each token stands for."""

from __future__ import annotations

import numpy as np

from plotarmour.tokenizer import EOT, eot_id
from training.evaluate import position_bands, scored_bytes, token_bytes


def test_position_bands_double_from_256_and_stop_at_the_window():
    assert position_bands(32) == [(0, 32)]
    assert position_bands(512) == [(0, 256), (256, 512)]
    assert position_bands(2048) == [(0, 256), (256, 512), (512, 1024), (1024, 2048)]
    assert position_bands(700) == [(0, 256), (256, 512), (512, 700)]


def test_token_bytes_add_up_to_the_text(tiny_tokenizer):
    text = "Once upon a time, Lily found a shiny stone. \u00e9t\u00e9 \u2014 caf\u00e9!"
    ids = tiny_tokenizer.encode(text, add_special_tokens=False).ids + [eot_id(tiny_tokenizer)]
    sizes = token_bytes(tiny_tokenizer)
    assert int(sizes[ids].sum()) == len(text.encode("utf-8")) + 1  # end-of-text counts as one byte
    assert sizes[tiny_tokenizer.token_to_id(EOT)] == 1
    tokens = np.array(ids, dtype=np.uint16)
    assert scored_bytes(tokens, [0], len(ids) - 1, sizes) == int(sizes[ids[1:]].sum())  # targets only
