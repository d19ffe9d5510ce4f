"""Load an untracked `.env` file into the environment (secrets live there or in the environment)."""

from __future__ import annotations

import logging
import os
from collections.abc import MutableMapping
from pathlib import Path

log = logging.getLogger(__name__)


def load_env_file(path: Path = Path(".env"), environ: MutableMapping[str, str] | None = None) -> list[str]:
    """Set `KEY=VALUE` lines of `path` that the environment does not already set; returns their keys.

    Blank lines and `#` comments are skipped; a value may be wrapped in single or double quotes.
    A missing file is not an error. Values are never logged.
    """
    environ = os.environ if environ is None else environ
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    loaded: list[str] = []
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        key, sep, value = line.removeprefix("export ").partition("=")
        key = key.strip()
        if not sep or not key.isidentifier():
            log.warning("%s line %d ignored: expected KEY=VALUE", path, number)
            continue
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        if key not in environ:
            environ[key] = value
            loaded.append(key)
    return loaded
