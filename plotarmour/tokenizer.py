"""The one vocabulary shared by both models of a pair (docs/ARCHITECTURE.md §2).

Byte-level BPE built with the Hugging Face `tokenizers` library and stored as a
`tokenizer.json`. This module must stay light (no torch): the gateway imports it
only to check fingerprints and to detokenize streamed ids.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOT = "<|endoftext|>"
TOKENIZER_FILE = "tokenizer.json"

# A file with no <|endoftext|> lines would otherwise become one giant "story";
# cutting the text the trainer sees at about this many characters keeps memory
# bounded while still letting whitespace runs like "\n\n" be counted in context.
_MAX_CHUNK_CHARS = 1 << 20


# --------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------


def train_tokenizer_from_iterator(
    texts: Iterable[str], vocab_size: int = 4096, min_frequency: int = 2
) -> Tokenizer:
    """Train a byte-level BPE tokenizer on an iterable of texts (consumed once)."""
    tok = Tokenizer(models.BPE())
    # add_prefix_space=False: a story's first word is encoded as written, so
    # encode(a) + encode(b) behaves predictably when texts are concatenated.
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[EOT],  # first special token gets id 0
        # All 256 byte symbols are in the vocab even if the corpus never used
        # them, so any UTF-8 text (emoji, CJK...) still encodes and round-trips.
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


def _open_text(path: Path):
    if path.suffix == ".gz":
        return gzip.open(path, "rt", encoding="utf-8", errors="replace")
    return open(path, "r", encoding="utf-8", errors="replace")


def iter_stories(files: Iterable[str | os.PathLike]) -> Iterator[str]:
    """Yield stories from files lazily, splitting on `<|endoftext|>` lines.

    The separator lines themselves are not yielded: the trainer does not split
    out special tokens, so it would otherwise learn merges for "<|", "endoftext"...
    """
    for f in files:
        buf: list[str] = []
        size = 0
        with _open_text(Path(f)) as fh:
            for line in fh:
                if line.strip() == EOT:
                    if buf:
                        yield "".join(buf)
                    buf, size = [], 0
                    continue
                buf.append(line)
                size += len(line)
                if size >= _MAX_CHUNK_CHARS:
                    yield "".join(buf)
                    buf, size = [], 0
        if buf:
            yield "".join(buf)


def train_tokenizer(
    files: Sequence[str | os.PathLike], vocab_size: int = 4096, min_frequency: int = 2
) -> Tokenizer:
    """Train on text files (plain or .gz) whose stories are separated by EOT lines."""
    missing = [str(f) for f in files if not Path(f).is_file()]
    if missing:
        raise FileNotFoundError(f"training file(s) not found: {', '.join(missing)}")
    return train_tokenizer_from_iterator(iter_stories(files), vocab_size, min_frequency)


# --------------------------------------------------------------------------
# Loading / saving / identity
# --------------------------------------------------------------------------


def _looks_local(spec: str) -> bool:
    """Guess whether a spec that does not exist was meant as a local path.

    Hub names look like "gpt2" or "owner/name"; anything with a path-ish shape
    is reported as a missing file rather than sent to the network.
    """
    return (
        os.path.isabs(spec)
        or spec.startswith((".", "~"))
        or spec.endswith(".json")
        or "\\" in spec
        or spec.count("/") > 1
    )


def _from_file(path: Path) -> Tokenizer:
    try:
        text = path.read_text(encoding="utf-8")
        json.loads(text)
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    try:
        return Tokenizer.from_str(text)
    except Exception as e:  # tokenizers raises a plain Exception
        raise ValueError(f"{path}: not a valid tokenizer.json ({e})") from e


def load_tokenizer(spec: str | os.PathLike) -> Tokenizer:
    """Load a tokenizer from a tokenizer.json path, a directory holding one, or a hub name."""
    path = Path(spec).expanduser()
    if path.is_dir():
        path = path / TOKENIZER_FILE
        if not path.is_file():
            raise FileNotFoundError(f"no {TOKENIZER_FILE} in directory: {path}")
        tok = _from_file(path)
    elif path.is_file():
        tok = _from_file(path)
    elif isinstance(spec, os.PathLike) or _looks_local(str(spec)):
        raise FileNotFoundError(f"tokenizer file not found: {path}")
    else:
        try:
            tok = Tokenizer.from_pretrained(str(spec))
        except Exception as e:
            raise OSError(
                f"could not load tokenizer {str(spec)!r} from the Hugging Face hub "
                f"(no local path of that name exists either): {str(e).rstrip('.')}. If this machine "
                f"is offline, pass the path of a local {TOKENIZER_FILE} instead."
            ) from e
    if tok.token_to_id(EOT) is None:
        raise ValueError(f"tokenizer {str(spec)!r} has no {EOT} token")
    return tok


def save_tokenizer(tok: Tokenizer, path_or_dir: str | os.PathLike) -> Path:
    """Write tokenizer.json (into the directory, or to the given *.json path)."""
    path = Path(path_or_dir)
    if path.suffix != ".json":
        path = path / TOKENIZER_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    # Write then rename, so a server starting concurrently never reads half a file.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tokenizer.", suffix=".tmp")
    os.close(fd)
    try:
        tok.save(tmp, pretty=True)
        os.chmod(tmp, 0o644)  # mkstemp makes 0600; readers may run as another user
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def fingerprint(tok: Tokenizer) -> str:
    """sha256 (hex) over a canonical JSON form, stable across save/reload and pretty-printing."""
    canon = json.dumps(
        json.loads(tok.to_str()), sort_keys=True, separators=(",", ":"), ensure_ascii=False
    )
    return hashlib.sha256(canon.encode("utf-8")).hexdigest()


def eot_id(tok: Tokenizer) -> int:
    i = tok.token_to_id(EOT)
    if i is None:
        raise ValueError(f"tokenizer has no {EOT} token")
    return i


# --------------------------------------------------------------------------
# Detokenizing
# --------------------------------------------------------------------------


class IncrementalDetokenizer:
    """Turn a stream of token ids into text pieces without splitting characters.

    A byte-level token may carry only part of a UTF-8 character (emoji and CJK
    are often several tokens), which decodes to U+FFFD until the rest arrives.
    We keep two offsets into a short window of ids:
      - `_prefix`: start of a few ids already emitted, decoded again only as
        context (some decoders, e.g. SentencePiece-style ones, drop a leading
        space for the first token they see, so decoding a token alone is wrong);
      - `_read`: end of what has been emitted.
    New text = decode(window) minus decode(already-emitted part of window). It is
    held back while it ends in U+FFFD, i.e. a character is still incomplete.
    Work per token is proportional to the window, not to the story.
    """

    def __init__(
        self,
        tok: Tokenizer,
        prompt_ids: Sequence[int] = (),
        skip_special_tokens: bool = True,
        context: int = 4,
    ):
        self._tok = tok
        self._skip = skip_special_tokens  # same default as Tokenizer.decode
        # Only the tail of the prompt matters, as context for the first token.
        self._ids: list[int] = list(prompt_ids)[-context:] if context else []
        self._prefix = 0
        self._read = len(self._ids)

    def _decode(self, ids: list[int]) -> str:
        return self._tok.decode(ids, skip_special_tokens=self._skip)

    def push(self, token_id: int) -> str:
        """Add one token; return the text it completed (possibly "")."""
        self._ids.append(token_id)
        old = self._decode(self._ids[self._prefix : self._read])
        new = self._decode(self._ids[self._prefix :])
        if len(new) <= len(old) or new.endswith("\ufffd"):
            return ""  # nothing new yet, or a character is still incomplete
        # The emitted part always decoded to whole characters, so `new` starts
        # with `old` and the rest is exactly the text added by pending ids.
        piece = new[len(old) :]
        # Slide the window: what was pending becomes the context; drop older ids.
        del self._ids[: self._read]
        self._prefix, self._read = 0, len(self._ids)
        return piece

    def flush(self) -> str:
        """End of stream: return held text (may contain U+FFFD if truly invalid)."""
        old = self._decode(self._ids[self._prefix : self._read])
        new = self._decode(self._ids[self._prefix :])
        del self._ids[: self._read]
        self._prefix, self._read = 0, len(self._ids)
        return new[len(old) :] if len(new) > len(old) else ""
