"""REST + SSE gateway: blends the GPT-2 and BDH model servers token by token.

Imports no torch (its image stays small); it learns the tokenizer from the servers.
"""

from .app import create_app
from .settings import GatewaySettings

__all__ = ["create_app", "GatewaySettings"]
