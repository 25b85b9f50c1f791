"""Running generations: each one's id and weight (what steering changes), and the
registry that finds them by id for `POST /generations/{id}`."""

from __future__ import annotations

import secrets
from dataclasses import dataclass, field

from plotarmour.roles import ROLES


@dataclass
class Generation:
    """A running generation; the only mutable part is the weight: a schedule (`steering`,
    from the request) sets it when its token comes, and live steering (`steer`) takes over
    from the schedule for good."""

    id: str
    logic_weight: float
    tokens_done: int = 0
    schedule: list[tuple[int, float]] = field(default_factory=list)
    waiting: set[str] = field(default_factory=set)  # servers it waits to come back ("gpt2", "bdh")
    due: set[str] = field(default_factory=set)  # servers whose answer to its current step is due

    def steer(self, logic_weight: float) -> None:
        """Live steering: this weight from the next token on; a schedule still pending is
        dropped (the person at the slider has taken over from the replayed story)."""
        self.logic_weight = logic_weight
        self.schedule.clear()

    def next_weight(self) -> float:
        """The weight for the token about to be drawn (index `tokens_done`)."""
        while self.schedule and self.schedule[0][0] <= self.tokens_done:
            self.logic_weight = self.schedule.pop(0)[1]
        return self.logic_weight


# The scheduler indexes the roles in this order: 0 the creativity role, 1 the logic role.
ROLE_ORDER = tuple(ROLES)


# Built once: the scheduler asks for every story at every step.
_ALONE = {ROLES[name].alone_at: (i,) for i, name in enumerate(ROLE_ORDER)}
_BOTH = tuple(range(len(ROLE_ORDER)))


def roles_for(weight: float) -> tuple[int, ...]:
    """The roles (indexes into ROLE_ORDER) a token drawn at this weight needs: at an end of
    the slider the other role's probabilities are multiplied by 0, so it need not be asked."""
    return _ALONE.get(weight, _BOTH)


class Registry:
    """Running generations by id, so `POST /generations/{id}` can steer them."""

    def __init__(self, owner: str = ""):
        self._running: dict[str, Generation] = {}
        self._suffix = f"-{owner}" if owner else ""  # the replica that runs them (replicas.py)

    def start(self, logic_weight: float, schedule: list[tuple[int, float]] | None = None) -> Generation:
        gen = Generation(id="gen-" + secrets.token_hex(8) + self._suffix, logic_weight=logic_weight,
                         schedule=list(schedule or []))
        self._running[gen.id] = gen
        return gen

    def finish(self, gen: Generation) -> None:
        self._running.pop(gen.id, None)

    def get(self, gen_id: str) -> Generation | None:
        return self._running.get(gen_id)
