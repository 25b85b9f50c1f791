"""The logic validator's route: which draft words does the context make less likely?

The work (the Score calls, the limits, the arithmetic) is the validation service's
(../validation.py); a client that leaves cancels it.
"""

from __future__ import annotations

from fastapi import APIRouter, Request

from .. import validation
from ..errors import OpenAIErrors
from ..schemas import ValidateRequest
from ..runs import unless_disconnected
from ..service import GatewayDep

router = APIRouter(tags=["validate"], route_class=OpenAIErrors)


@router.post("/validate")
async def validate(req: ValidateRequest, gw: GatewayDep, request: Request):
    return await unless_disconnected(request, validation.validate(gw, req.context, req.draft, req.sensitivity))
