"""The README's settings table is generated from the settings classes: it must be current."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_settings_table_is_current():
    table = subprocess.run([sys.executable, "scripts/settings_table.py"], cwd=ROOT, capture_output=True,
                           text=True, check=True).stdout
    assert table in (ROOT / "README.md").read_text(), \
        "README.md's settings table is stale: run python scripts/settings_table.py --write"


def test_readme_opens_with_the_two_commands():
    text = (ROOT / "README.md").read_text()
    first_block = text.split("```bash", 1)[1].split("```", 1)[0]
    assert "python3 -m plotarmour.stack" in first_block and "bash scripts/test.sh" in first_block


def test_the_documents_the_code_cites_are_in_the_project():
    """A module that cites a document (docs/..., checkpoints/..., README) cites a file the project contains."""
    import re

    root = Path(__file__).resolve().parents[2]
    cited = {}
    for folder in ("plotarmour", "services", "training", "bench", "scripts", "tests"):
        for path in (root / folder).rglob("*.py"):
            for name in re.findall(r"\b((?:docs|checkpoints)/[\w.-]+\.md|README\.md|DESIGN\.md)\b", path.read_text()):
                cited.setdefault(name, path.relative_to(root))
    missing = {name: str(where) for name, where in cited.items() if not (root / name).is_file()}
    assert not missing, missing
    assert "docs/ARCHITECTURE.md" in cited
