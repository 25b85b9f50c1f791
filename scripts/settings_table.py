"""Print (or write into README.md) the table of every setting of the three services.

    python scripts/settings_table.py            # print the Markdown table
    python scripts/settings_table.py --write    # replace the table between the README markers

The table is made from the settings classes themselves, so it cannot drift from the
code; a test checks that README.md holds the current one.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
BEGIN, END = "<!-- settings:begin -->", "<!-- settings:end -->"


def rows(settings_cls) -> list[str]:
    prefix = settings_cls.model_config.get("env_prefix", "")
    out = []
    for name, field in settings_cls.model_fields.items():
        default = "(required)" if field.is_required() else field.default
        default = "" if default is None else str(default)
        meaning = (field.description or "").replace("|", "\\|")
        out.append(f"| `{prefix}{name.upper()}` | `{default}` | {meaning} |")
    return out


def table() -> str:
    sys.path.insert(0, str(ROOT))
    from services.bdh import Settings as BDHSettings
    from services.gateway.settings import GatewaySettings
    from services.gpt2 import Settings as GPT2Settings

    lines = []
    for title, cls in [("Gateway (`python -m services.gateway`)", GatewaySettings),
                       ("BDH model server (`python -m services.bdh`; each also a flag, e.g. `--max-sessions`)", BDHSettings),
                       ("GPT-2 model server (`python -m services.gpt2`; the same settings as BDH)", GPT2Settings)]:
        lines += [f"**{title}**", "", "| env var | default | meaning |", "|---|---|---|", *rows(cls), ""]
    return "\n".join(lines).rstrip() + "\n"


def readme_with(text: str, readme: str) -> str:
    pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
    if not pattern.search(readme):
        raise SystemExit(f"{README}: markers {BEGIN} ... {END} not found")
    return pattern.sub(lambda _: f"{BEGIN}\n{text}{END}", readme)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--write", action="store_true", help="update README.md in place")
    args = ap.parse_args()
    text = table()
    if args.write:
        README.write_text(readme_with(text, README.read_text()))
    else:
        print(text, end="")


if __name__ == "__main__":
    main()
