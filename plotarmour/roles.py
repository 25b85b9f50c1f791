"""The blend's two roles, declared once.

A story blends two next-token distributions by `logic_weight`: at 0 only the
"creativity" role speaks, at 1 only the "logic" role. Any model family can fill a role
(`plotarmour.models.FAMILIES`); the shipped pair puts GPT-2 in one and BDH in the other,
and the role is named after its shipped family, as the settings, metrics and API already
spell it (`gpt2_address`, `p_bdh`). Everything that needs a role's port, environment
prefix or words reads them here: the model servers' settings, the local stack, the
gateway and its error messages (docker-compose.yml and deploy/k8s follow the same table,
and tests/deploy checks that they do).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Role:
    name: str          # "bdh": settings, metrics, token events and the CLI say this
    label: str         # "logic": what the page's slider calls this end
    family: str        # "BDH": the family of the shipped checkpoint in this role
    alone_at: float    # the logic_weight at which a story needs this role alone
    port: int          # default gRPC port of its model server
    metrics_port: int  # default Prometheus port of its model server

    @property
    def env_prefix(self) -> str:
        """The prefix of its model server's environment variables: BDH_PORT, ..."""
        return f"{self.name.upper()}_"

    @property
    def words(self) -> str:
        """How a message to a person names it: "the logic model (BDH)"."""
        return f"the {self.label} model ({self.family})"

    @property
    def other(self) -> Role:
        return next(r for r in ROLES.values() if r is not self)

    @property
    def without(self) -> str:
        """What a storyteller can still do while this role's server is down."""
        other = self.other
        return f"a story at {other.alone_at:.0%} logic needs only {other.words}"


# In the order the gateway asks them: creativity first, then logic.
ROLES: dict[str, Role] = {r.name: r for r in (
    Role("gpt2", "creativity", "GPT-2", alone_at=0.0, port=50052, metrics_port=9102),
    Role("bdh", "logic", "BDH", alone_at=1.0, port=50051, metrics_port=9101),
)}
