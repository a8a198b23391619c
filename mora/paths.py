"""Where the suite keeps things: the repository, its configs, and the cache of built artefacts.

The cache holds what is *built* on a machine and never committed: registry packages unpacked for their
text, corpora assembled from them, tokenizers trained on those corpora, packed token blocks and the
pretrained pocket base model.  It lives in ``.cache/mora`` at the repository root unless ``MORA_CACHE``
points elsewhere (a shared disk on a cluster, say).  Configs name cached things with the resolver
``${cache:<sub/path>}``, so a run's frozen ``config.yaml`` holds the absolute path it used.
"""

from __future__ import annotations

import os
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
CONF_DIR = REPO_ROOT / "conf"

#: first path component under the cache → the command that builds it (named in "missing" errors)
BUILT_BY = {
    "packages": "make corpus",
    "corpora": "make corpus",
    "tokenizers": "make corpus",
    "models": "make pocket-base",
}


def cache_dir() -> Path:
    """``$MORA_CACHE``, or ``<repo>/.cache/mora``."""
    return Path(os.environ.get("MORA_CACHE") or REPO_ROOT / ".cache" / "mora").expanduser().resolve()


def cache_path(sub: str) -> Path:
    """``cache_dir() / sub`` (the ``${cache:sub}`` resolver)."""
    return cache_dir() / sub


def build_hint(path: str | Path) -> str | None:
    """The command that builds ``path`` when it lies in the cache, else None."""
    try:
        relative = Path(path).expanduser().resolve().relative_to(cache_dir())
    except ValueError:
        return None
    return BUILT_BY.get(relative.parts[0]) if relative.parts else None
