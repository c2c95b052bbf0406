"""Which SGLang is installed, and the one range of SGLang releases specplug supports.

The plugin's registration (:mod:`specplug.plugins.sglang`) and the pins checked at worker
start-up (:data:`specplug.patches.sglang.SGLANG_PATCHES`) both read the range from here.
"""

from __future__ import annotations

from specplug.drafters.errors import ConfigError
from specplug.patches.base import PatchError, parse_version

__all__ = [
    "SUPPORTED",
    "SUPPORTED_RANGE",
    "SglangVersionError",
    "sglang_version",
    "check_version",
    "detect_sglang_version",
]

#: inclusive (major, minor, patch) bounds; pre-, post- and local releases count as their release
SUPPORTED = ((0, 5, 23), (0, 5, 23))
#: the same range as pip writes it (pyproject's ``sglang`` extra)
SUPPORTED_RANGE = "sglang>=0.5.23,<0.5.24"


class SglangVersionError(PatchError, ConfigError):
    """The installed SGLang is outside the supported range (or absent)."""


def sglang_version() -> str | None:
    """The installed SGLang's version (package metadata), or None when it is not installed."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("sglang")
    except PackageNotFoundError:
        return None


def check_version(ver: str | None) -> str:
    """``ver`` when it lies in the supported range, else SglangVersionError naming the range."""
    if ver is None:
        raise SglangVersionError(
            f"SGLang is not installed; specplug's SGLang adapter needs "
            f"{SUPPORTED_RANGE} (pip install 'specplug[sglang]')"
        )
    rel = parse_version(ver if ver.count(".") >= 2 else f"{ver}.0")
    if rel is None or not SUPPORTED[0] <= rel <= SUPPORTED[1]:
        raise SglangVersionError(
            f"specplug's SGLang adapter supports {SUPPORTED_RANGE}, found sglang {ver}; "
            f"install a supported SGLang (pip install 'sglang==0.5.23') or a specplug release "
            f"built for sglang {ver}"
        )
    return ver


def detect_sglang_version() -> tuple[str, str]:
    """(version text, how it was found), for :class:`specplug.patches.base.PatchSet`."""
    return check_version(sglang_version()), "sglang's package metadata"
