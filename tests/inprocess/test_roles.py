"""The roles are declared once (plotarmour/roles.py); the page's copy (roles.js, which the
browser cannot import from Python) must say the same."""

from __future__ import annotations

import json
import re
from pathlib import Path

from plotarmour.roles import ROLES

ROLES_JS = Path(__file__).resolve().parents[2] / "services/gateway/static/js/roles.js"


def test_the_page_names_the_roles_as_the_table_does():
    body = re.search(r"export const ROLES = (\{.*?\});", ROLES_JS.read_text(encoding="utf-8"), re.S)
    assert body, f"{ROLES_JS}: expected 'export const ROLES = {{...}};' (plain JSON)"
    page = json.loads(body.group(1))
    # Same roles in the same order (the gateway's: creativity first), same words.
    assert list(page) == list(ROLES)
    assert page == {name: {"label": r.label, "family": r.family} for name, r in ROLES.items()}
