"""One APIRouter per surface the gateway speaks.

    native    /generate, /generate_stream, /generations/{id}   PlotArmour's own API
    openai    /v1/completions, /v1/chat/completions, /v1/models
    tgi       POST /                                           Text Generation Inference
    validate  /validate                                        the logic validator
    ops       /, /health, /ready, /info, /metrics              the page and operations
"""

from . import native, openai, ops, tgi, validate

ROUTERS = [native.router, openai.router, tgi.router, validate.router, ops.router]
