"""Cost models measured where they run, cached on disk by what they depend on.

The cost of a verify pass depends on the model (its vocabulary makes every verified node
pay for the LM head), the device, the dtype, the thread count and the torch / engine
versions, so one shipped table cannot serve everyone. An engine measures its own curve at
first use (a few seconds) and :func:`cached_cost_model` keeps it under
``<cache>/cost_models/<hash of the key>.json`` with the key written inside: a file whose key
differs (a hash collision, a hand edit) or that cannot be read is measured again, with a
warning, never an error. The directory is bounded (:data:`MAX_FILES`, oldest dropped).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import pathlib
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from .budget import CostModel
from .errors import ConfigError

__all__ = ["cache_root", "CachedCost", "cached_cost_model", "cost_cache_dir", "key_digest", "MAX_FILES", "FORMAT"]

log = logging.getLogger(__name__)

#: bump when the measurement changes meaning (grid, context, what is timed)
FORMAT = 2
#: cost model files kept; the least recently written go first
MAX_FILES = 32


@dataclass
class CachedCost:
    """A cost model and where it came from: ``source`` is "measured" (this call measured
    it, taking ``measure_s``) or "cache" (read from ``path``)."""

    model: CostModel
    source: str
    path: str
    key: dict
    measure_s: float = 0.0

    def describe(self) -> dict:
        """What a benchmark JSON records about the cost model it used."""
        return {
            "source": self.source,
            "path": self.path,
            "key": self.key,
            "measure_s": round(self.measure_s, 3),
            "grid": self.model.is_grid,
            "points": len(self.model.points()),
        }


def cache_root() -> pathlib.Path:
    """specplug's cache: ``$SPECPLUG_CACHE``, else ``$XDG_CACHE_HOME/specplug``, else
    ``~/.cache/specplug`` (converted models, cost models)."""
    env = os.environ.get("SPECPLUG_CACHE")
    if env:
        return pathlib.Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = pathlib.Path(xdg).expanduser() if xdg else pathlib.Path.home() / ".cache"
    return base / "specplug"


def cost_cache_dir() -> str:
    return str(cache_root() / "cost_models")


def key_digest(key: Mapping) -> str:
    blob = json.dumps({"format": FORMAT, **dict(key)}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


def cached_cost_model(
    key: Mapping, measure: Callable[[], list[dict]], *, directory: str | None = None, refresh: bool = False
) -> CachedCost:
    """The cost model stored under ``key``, or ``measure()``'s points (then stored).

    ``key``: JSON-serialisable facts the timing depends on (model, device, dtype, threads,
    versions). ``measure``: returns the points (``{"tokens", "seconds", "batch", "width"}``).
    ``refresh``: measure even when a stored model exists."""
    key = {"format": FORMAT, **dict(key)}
    directory = directory or cost_cache_dir()
    path = os.path.join(directory, f"{key_digest(key)}.json")
    if not refresh and os.path.exists(path):
        try:
            return CachedCost(_read(path, key), "cache", path, key)
        except ConfigError as e:
            warnings.warn(f"specplug: {e}; measuring the cost model again", RuntimeWarning, stacklevel=2)
    t0 = time.perf_counter()
    points = measure()
    elapsed = time.perf_counter() - t0
    model = CostModel.from_points(points, {"key": key})
    try:
        _write(path, key, points, elapsed)
        _bound(directory)
    except OSError as e:  # a read-only cache still gives a usable model
        log.warning("specplug: cannot store the cost model in %s (%s); it will be measured again next time", path, e)
    return CachedCost(model, "measured", path, key, elapsed)


def _read(path: str, key: dict) -> CostModel:
    try:
        with open(path, encoding="utf-8") as f:
            data = json.load(f)
        stored = data["key"]
        points = data["points"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(f"cost model cache {path} is unreadable ({type(e).__name__}: {e})") from None
    if stored != json.loads(json.dumps(key, default=str)):
        raise ConfigError(f"cost model cache {path} was measured for another setup")
    return CostModel.from_points(points, {"key": key, "path": path})


def _write(path: str, key: dict, points: list[dict], elapsed: float) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    data = {"key": key, "measure_s": elapsed, "date": time.strftime("%Y-%m-%d"), "points": points}
    fd, tmp = tempfile.mkstemp(dir=os.path.dirname(path), suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(data, f, indent=1, default=str)
        os.replace(tmp, path)  # readers never see half a file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _bound(directory: str) -> None:
    files = [os.path.join(directory, f) for f in os.listdir(directory) if f.endswith(".json")]
    if len(files) <= MAX_FILES:
        return
    files.sort(key=os.path.getmtime)
    for f in files[: len(files) - MAX_FILES]:
        try:
            os.unlink(f)
        except OSError:
            pass
