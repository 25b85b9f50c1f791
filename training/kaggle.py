"""Pack what the Kaggle notebook needs into one zip (docs/ARCHITECTURE.md §8).

    python -m training.kaggle --out results/plotarmour-kaggle.zip

Upload the zip as a Kaggle dataset (named e.g. `plotarmour-code`; Kaggle unpacks it, and
the notebook finds the code unpacked or zipped), attach it to a notebook made from
`training/kaggle.ipynb`, turn on a GPU (and the internet, to download TinyStories, or
attach a TinyStories dataset), set the parameters cell and run all cells. The zip holds
the shared package `plotarmour/`, the `training/` package with its presets and notebook,
and pyproject.toml; no caches, data or checkpoints.
"""

from __future__ import annotations

import argparse
import sys
import zipfile
from pathlib import Path
from typing import Sequence

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("plotarmour", "training")
EXTRA_FILES = ("pyproject.toml",)
SKIP_DIRS = {"__pycache__", ".ipynb_checkpoints"}
SKIP_SUFFIXES = {".pyc", ".bin", ".safetensors"}


def bundle_files(root: Path = ROOT) -> list[Path]:
    """Paths (relative to root) that go into the bundle, sorted."""
    files = []
    for pkg in PACKAGES:
        for p in sorted((root / pkg).rglob("*")):
            rel = p.relative_to(root)
            if p.is_file() and not SKIP_DIRS & set(rel.parts) and p.suffix not in SKIP_SUFFIXES:
                files.append(rel)
    files += [Path(f) for f in EXTRA_FILES if (root / f).is_file()]
    missing = [pkg for pkg in PACKAGES if not (root / pkg / "__init__.py").is_file()]
    if missing:
        raise FileNotFoundError(f"{root}: package(s) {missing} not found; run from a PlotArmour checkout")
    return files


def make_bundle(out: str | Path, root: Path = ROOT) -> Path:
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for rel in bundle_files(root):
            zf.write(root / rel, rel.as_posix())
    return out


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m training.kaggle", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="results/plotarmour-kaggle.zip", help="zip to write (default %(default)s)")
    args = ap.parse_args(argv)
    try:
        out = make_bundle(args.out)
    except OSError as e:
        print(f"kaggle: error: {e}", file=sys.stderr)
        return 2
    with zipfile.ZipFile(out) as zf:
        n = len(zf.namelist())
    print(f"wrote {out} ({n} files, {out.stat().st_size / 1024:.0f} KiB)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
