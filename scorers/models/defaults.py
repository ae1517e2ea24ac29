"""Where the committed model artifacts live (package data under scorers/artifacts/)."""

from __future__ import annotations

from pathlib import Path
from typing import Final

ARTIFACTS_DIR: Final = Path(__file__).resolve().parent.parent / "artifacts"
PRIMARY_DIR: Final = ARTIFACTS_DIR / "primary"
FALLBACK_DIR: Final = ARTIFACTS_DIR / "fallback"
