"""Reading the YAML configuration files (recipes, ablations) with a user-facing error instead of a traceback."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from models.errors import UserError


def read_yaml(path: str | Path, what: str) -> dict[str, Any]:
    """The mapping in a YAML file; `what` starts the one-line message when it cannot be read."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"{what} ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{what}: expected a mapping of config fields")
    return data
