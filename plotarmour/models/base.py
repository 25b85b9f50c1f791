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

    Subclasses implement `_prefill`, `_step`, `_release` and `_score_logits`; this base
    class owns validation and session bookkeeping so both families behave the same.
    """

    model_type: str = ""

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
    def _prefill(self, ids: torch.Tensor) -> tuple[Any, torch.Tensor]:
        """ids (T,) → (state, logits (V,)) for the token after the prompt."""

    @abstractmethod
    def _step(self, sessions: list[_Session], tokens: torch.Tensor) -> torch.Tensor:
        """One token per session (B,) → logits (B, V); advances each session's state."""

    def _release(self, state: Any) -> None:
        """Free what a session's state holds (a pool slot, say)."""

    @abstractmethod
    def _score_logits(self, ids: torch.Tensor) -> torch.Tensor:
        """ids (T,) → logits (T, V) of a full teacher-forced pass."""

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

    @torch.inference_mode()
    def open(self, prompt_ids: Sequence[int]) -> tuple[int, torch.Tensor]:
        """Prefill a prompt; returns (session id, logits (V,) for the next token)."""
        ids = self._check_ids(prompt_ids, what="prompt")
        if len(ids) > self.max_context:
            raise InvalidInput(f"prompt has {len(ids)} tokens; the context limit is {self.max_context}")
        state, logits = self._prefill(torch.tensor(ids, dtype=torch.long, device=self.device))
        sid = next(self._ids)
        self._sessions[sid] = _Session(state, len(ids))
        return sid, logits.float().cpu()

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

    def close(self, session: int) -> None:
        sess = self._sessions.pop(session, None)
        if sess is not None:
            self._release(sess.state)

    @torch.inference_mode()
    def score(self, ids: Sequence[int]) -> torch.Tensor:
        """Teacher-forced log p(ids[t] | ids[:t]) for t = 1..T-1, float32 (T-1,)."""
        ids = self._check_ids(ids, what="sequence")
        if len(ids) < 2:
            raise InvalidInput("scoring needs at least 2 tokens (a context token and one to score)")
        if len(ids) > self.max_context:
            raise InvalidInput(f"sequence has {len(ids)} tokens; the context limit is {self.max_context}")
        t = torch.tensor(ids, dtype=torch.long, device=self.device)
        logp = torch.log_softmax(self._score_logits(t).float(), dim=-1)  # (T, V)
        return logp[:-1].gather(1, t[1:, None]).squeeze(1).cpu()

    # -- helpers -----------------------------------------------------------------
    def _get(self, session: int) -> _Session:
        try:
            return self._sessions[session]
        except KeyError:
            raise UnknownSession(f"session {session} is not open") from None

    def _check_ids(self, ids: Sequence[int], *, what: str) -> list[int]:
        ids = [int(i) for i in ids]
        if not ids:
            raise InvalidInput(f"{what} is empty")
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise InvalidInput(f"{what} has token id {bad[0]} outside the vocabulary [0, {self.vocab_size})")
        return ids
