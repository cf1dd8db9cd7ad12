"""Reading the YAML configuration files (recipes, ablations) with a user-facing error instead of a traceback."""
from __future__ import annotations

import re
from functools import lru_cache
from pathlib import Path
from typing import Any

from models.errors import UserError

# PyYAML follows YAML 1.1, where a float's exponent needs a dot and a sign: `1e-6` and `2.5e3` are strings there,
# so `beta_start: 1e-6` or a run's own train_config.json given back as --config would reach the code as text.
# The loader adds YAML 1.2's exponent forms; every other float is SafeLoader's own.
_EXPONENT_FLOAT = re.compile(r"^[-+]?(?:[0-9][0-9_]*(?:\.[0-9_]*)?|\.[0-9_]+)[eE][-+]?[0-9]+$")


@lru_cache(maxsize=1)
def _loader() -> type:
    import yaml

    class Loader(yaml.SafeLoader):
        pass

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _EXPONENT_FLOAT, list("-+0123456789."))
    return Loader


def read_yaml(path: str | Path, what: str) -> dict[str, Any]:
    """The mapping in a YAML file; `what` starts the one-line message when it cannot be read."""
    import yaml

    try:
        data = yaml.load(Path(path).read_text(encoding="utf-8"), Loader=_loader()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise UserError(f"{what} ({exc})") from None
    if not isinstance(data, dict):
        raise UserError(f"{what}: expected a mapping of config fields")
    return data
