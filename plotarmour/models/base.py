"""The one decode interface both model families implement.

A model server drives an engine: it opens a session from prompt ids (prefill), steps
sessions one token at a time — several at once as one batch, each at its own position —
and closes them. Engines know token ids only; text lives in the tokenizer and gateway.
Logits come back as float32 tensors on the CPU, ready to be turned into bytes.
"""

from __future__ import annotations

import itertools
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch


class InvalidInput(ValueError):
    """A caller's mistake (bad token id, empty prompt, context too long): never a server fault."""


class UnknownSession(KeyError):
    """A session id that is not open (never opened, or already closed)."""


@dataclass(frozen=True)
class ModelInfo:
    model_type: str
    vocab_size: int
    max_context: int
    num_parameters: int
    device: str
    dtype: str


@dataclass
class _Session:
    state: Any  # the family's own decode state (BDH slot, GPT-2 KV cache)
    position: int  # tokens consumed so far


class DecodeEngine(ABC):
    """Sessions of constant-state decoding over one model.

    The server's scheduler drives an engine in small pieces so that no piece of work
    holds back running stories for long:
        sid = engine.begin()                       # an empty session at position 0
        engine.feed(sid, chunk, want="none")       # prompt chunks, one scheduler turn each
        logits = engine.feed(sid, last_chunk, want="last")   # (V,) for the next token
        engine.step({sid: token, other: token})    # one token per session, one batch
        engine.close(sid)
    `open` and `score` do the same in one call, for tests and simple callers.

    Subclasses implement `_new_state`, `_feed`, `_step` and `_release`; this base class
    owns validation and session bookkeeping so both families behave the same.
    """

    model_type: str = ""
    chunk_size: int = 256  # tokens per `feed` in open()/score(); the server sets its own

    def __init__(self, model: torch.nn.Module, *, max_context: int):
        self.model = model.eval()
        self.max_context = max_context
        self._sessions: dict[int, _Session] = {}
        self._ids = itertools.count(1)

    # -- what subclasses provide -------------------------------------------------
    @property
    @abstractmethod
    def vocab_size(self) -> int: ...

    @abstractmethod
    def _new_state(self) -> Any:
        """Allocate an empty decode state (a pool slot, say) for a new session."""

    @abstractmethod
    def _feed(self, sess: _Session, ids: torch.Tensor, want: str) -> torch.Tensor | None:
        """Run ids (T,) at positions sess.position.. through sess.state, advancing it.

        want: "none" → None, "last" → logits (V,) after the last id, "all" → logits (T, V).
        """

    @abstractmethod
    def _step(self, sessions: list[_Session], tokens: torch.Tensor) -> torch.Tensor:
        """One token per session (B,) → logits (B, V); advances each session's state."""

    def _release(self, state: Any) -> None:
        """Free what a session's state holds (a pool slot, say)."""

    # -- the interface -----------------------------------------------------------
    @property
    def info(self) -> ModelInfo:
        p = next(self.model.parameters())
        return ModelInfo(
            model_type=self.model_type,
            vocab_size=self.vocab_size,
            max_context=self.max_context,
            num_parameters=sum(t.numel() for t in self.model.parameters()),
            device=str(p.device),
            dtype=str(p.dtype).removeprefix("torch."),
        )

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def open_sessions(self) -> int:
        return len(self._sessions)

    def position(self, session: int) -> int:
        return self._get(session).position

    def check_prompt(self, prompt_ids: Sequence[int]) -> list[int]:
        """Validate a prompt before any work is done; returns it as a list of ints."""
        self._check_length(prompt_ids, what="prompt")
        return self._check_ids(prompt_ids, what="prompt")

    def check_score(self, ids: Sequence[int]) -> list[int]:
        """Validate a sequence to score before any work is done."""
        self._check_length(ids, what="sequence")
        ids = self._check_ids(ids, what="sequence")
        if len(ids) < 2:
            raise InvalidInput("scoring needs at least 2 tokens (a context token and one to score)")
        return ids

    def begin(self) -> int:
        """Open an empty session (position 0); feed it its prompt next."""
        sid = next(self._ids)
        self._sessions[sid] = _Session(self._new_state(), 0)
        return sid

    @torch.inference_mode()
    def feed(self, session: int, ids: Sequence[int], want: str = "last") -> torch.Tensor | None:
        """Run a chunk of prompt ids through a session (see `_feed`); logits float32 on the CPU."""
        if want not in ("none", "last", "all"):
            raise ValueError(f"want must be 'none', 'last' or 'all', got {want!r}")
        sess = self._get(session)
        ids = self._check_ids(ids, what="prompt chunk")
        if sess.position + len(ids) > self.max_context:
            raise InvalidInput(f"session {session} would pass the context limit of {self.max_context} tokens")
        logits = self._feed(sess, torch.tensor(ids, dtype=torch.long, device=self.device), want)
        sess.position += len(ids)
        return None if logits is None else logits.float().cpu()

    def open(self, prompt_ids: Sequence[int]) -> tuple[int, torch.Tensor]:
        """Prefill a prompt in chunks; returns (session id, logits (V,) for the next token)."""
        ids = self.check_prompt(prompt_ids)
        sid = self.begin()
        try:
            for start in range(0, len(ids), self.chunk_size):
                chunk = ids[start : start + self.chunk_size]
                logits = self.feed(sid, chunk, "last" if start + len(chunk) == len(ids) else "none")
        except BaseException:
            self.close(sid)
            raise
        return sid, logits

    @torch.inference_mode()
    def step(self, tokens: Mapping[int, int]) -> torch.Tensor:
        """Feed one token to each session in `tokens` ({session: token}) as one batch.

        Returns logits (B, V) in the mapping's order. Nothing advances if any entry is
        invalid, so one caller's mistake never corrupts another's session.
        """
        if not tokens:
            return torch.empty(0, self.vocab_size)
        sessions = [self._get(s) for s in tokens]
        ids = self._check_ids(list(tokens.values()), what="token")
        for sid, sess in zip(tokens, sessions):
            if sess.position >= self.max_context:
                raise InvalidInput(f"session {sid} is at the context limit of {self.max_context} tokens")
        logits = self._step(sessions, torch.tensor(ids, dtype=torch.long, device=self.device))
        for sess in sessions:
            sess.position += 1
        return logits.float().cpu()

    @torch.inference_mode()
    def step_and_feed(self, tokens: Mapping[int, int], session: int, ids: Sequence[int],
                      want: str = "last") -> tuple[torch.Tensor, torch.Tensor | None]:
        """`step(tokens)` and `feed(session, ids, want)` together → (step logits (B, V), the
        chunk's logits or None). Engines that can run both as one pass (`fuses_chunks`)
        do: a step beside a prompt then costs little more than the step alone. Both are
        checked first; an invalid one raises InvalidInput and nothing advances."""
        if want not in ("none", "last", "all"):
            raise ValueError(f"want must be 'none', 'last' or 'all', got {want!r}")
        sessions = [self._get(s) for s in tokens]
        step_ids = self._check_ids(list(tokens.values()), what="token")
        for sid, sess in zip(tokens, sessions):
            if sess.position >= self.max_context:
                raise InvalidInput(f"session {sid} is at the context limit of {self.max_context} tokens")
        sess = self._get(session)
        if any(s is sess for s in sessions):
            raise InvalidInput(f"session {session} cannot take a step and a chunk in one pass")
        ids = self._check_ids(ids, what="prompt chunk")
        if sess.position + len(ids) > self.max_context:
            raise InvalidInput(f"session {session} would pass the context limit of {self.max_context} tokens")
        if not self.fuses_chunks:
            return self.step(tokens), self.feed(session, ids, want)
        stepped, fed = self._step_and_feed(sessions, torch.tensor(step_ids, dtype=torch.long, device=self.device),
                                           sess, torch.tensor(ids, dtype=torch.long, device=self.device), want)
        for s in sessions:
            s.position += 1
        sess.position += len(ids)
        return stepped.float().cpu(), None if fed is None else fed.float().cpu()

    fuses_chunks = False  # whether `_step_and_feed` runs a step and a chunk as one pass

    def step_does_more(self, sessions: Sequence[int]) -> bool:
        """Whether stepping these sessions next costs more than a usual step (BDH: some
        fold their pending writes), so that a scheduler can keep a chunk off that pass."""
        return False

    def _step_and_feed(self, sessions: list[_Session], tokens: torch.Tensor, sess: _Session, ids: torch.Tensor,
                       want: str) -> tuple[torch.Tensor, torch.Tensor | None]:
        raise NotImplementedError

    def close(self, session: int) -> None:
        sess = self._sessions.pop(session, None)
        if sess is not None:
            self._release(sess.state)

    def score(self, ids: Sequence[int]) -> torch.Tensor:
        """Teacher-forced log p(ids[t] | ids[:t]) for t = 1..T-1, float32 (T-1,).

        Chunk by chunk through a scratch session, so memory does not grow with length."""
        ids = self.check_score(ids)
        sid = self.begin()
        try:
            # The last token predicts nothing, so it is never fed.
            parts = [score_chunk(self.feed(sid, ids[a : min(a + self.chunk_size, len(ids) - 1)], "all"), ids, a)
                     for a in range(0, len(ids) - 1, self.chunk_size)]
        finally:
            self.close(sid)
        return torch.cat(parts)

    # -- helpers -----------------------------------------------------------------
    def _get(self, session: int) -> _Session:
        try:
            return self._sessions[session]
        except KeyError:
            raise UnknownSession(f"session {session} is not open") from None

    def _check_length(self, ids: Sequence[int], *, what: str) -> None:
        # Before any copy: a request of millions of ids is refused without turning them into
        # Python ints, whose memory the allocator would keep after the refusal.
        if len(ids) > self.max_context:
            raise InvalidInput(f"{what} has {len(ids)} tokens; the context limit is {self.max_context}")

    def _check_ids(self, ids: Sequence[int], *, what: str) -> list[int]:
        ids = [int(i) for i in ids]
        if not ids:
            raise InvalidInput(f"{what} is empty")
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise InvalidInput(f"{what} has token id {bad[0]} outside the vocabulary [0, {self.vocab_size})")
        return ids


def score_chunk(logits: torch.Tensor, ids: list[int], start: int) -> torch.Tensor:
    """Log-probs a chunk gives: logits (T, V) of ids[start : start+T] → log p(ids[t+1] | ids[:t+1]) (T,)."""
    targets = torch.tensor(ids[start + 1 : start + 1 + logits.shape[0]], dtype=torch.long)
    logp = torch.log_softmax(logits.float(), dim=-1)
    return logp.gather(1, targets[:, None]).squeeze(1)


def expected_chunk(logits: torch.Tensor, top_k: int, entropy: bool) -> tuple[torch.Tensor | None, ...]:
    """What a chunk's model expected at each position: logits (T, V) →
    (ids of the top_k likeliest tokens (T, k), their log-probs (T, k), entropy in nats (T,));
    the parts not asked for are None."""
    logp = torch.log_softmax(logits.float(), dim=-1)  # (T, V)
    top_ids = top_lp = ent = None
    if top_k:
        top_lp, top_ids = logp.topk(min(top_k, logp.shape[-1]), dim=-1, sorted=True)  # (T, k)
    if entropy:
        ent = torch.special.entr(logp.exp()).sum(dim=-1)  # (T,); entr(0) = 0, so masked logits are fine
    return top_ids, top_lp, ent
