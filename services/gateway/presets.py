"""The page's presets, read from the one file that declares them (static/js/presets.js).

The native API's sampling defaults are the default preset's numbers, so a request that
names only a prompt and a weight is drawn the way the page draws by default.
bench/bench_stories.py measures every preset with the same reader.
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

PRESETS_JS = Path(__file__).resolve().parent / "static" / "js" / "presets.js"


@dataclass(frozen=True)
class Preset:
    logic_weight: float
    temperature: float
    top_k: int
    top_p: float


def read_presets(path: Path = PRESETS_JS) -> tuple[dict[str, Preset], str]:
    """({name: Preset}, the default preset's name)."""
    text = path.read_text(encoding="utf-8")
    body = re.search(r"export const PRESETS = (\{.*?\});", text, re.S)
    default = re.search(r'export const DEFAULT_PRESET = "(\w+)";', text)
    if not body or not default:
        raise ValueError(f"{path}: expected 'export const PRESETS = {{...}};' (plain JSON) "
                         "and 'export const DEFAULT_PRESET = \"name\";'")
    presets = {name: Preset(logic_weight=float(p["logic_weight"]), temperature=float(p["temperature"]),
                            top_k=int(p["top_k"]), top_p=float(p["top_p"]))
               for name, p in json.loads(body.group(1)).items()}
    if default.group(1) not in presets:
        raise ValueError(f"{path}: DEFAULT_PRESET {default.group(1)!r} is not one of {', '.join(presets)}")
    return presets, default.group(1)


PRESETS, DEFAULT_PRESET = read_presets()
DEFAULT = PRESETS[DEFAULT_PRESET]
# What the native API draws with when a request names no sampling settings.
NATIVE_DEFAULTS = {"temperature": DEFAULT.temperature, "top_k": DEFAULT.top_k, "top_p": DEFAULT.top_p}
