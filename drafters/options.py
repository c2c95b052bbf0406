"""Algorithm options, declared once beside each drafter class and checked in one place.

A drafter class lists what it accepts as ``OPTIONS`` (a tuple of :class:`Option`: name,
type, default, help, range or choices) and its ``DEFAULT_BUDGET``; its constructor takes
``(vocab_size, **options)`` and gets checked values, defaults filled in, from
:func:`resolve_options`. The registry (:mod:`.registry`) reads the same declarations for
validation, ``specplug algorithms -v`` and the engines' option parsing, so a default or a
choice is written nowhere else.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from .errors import ConfigError

__all__ = ["Option", "resolve_options"]


@dataclass(frozen=True)
class Option:
    name: str
    type: type
    default: Any
    help: str
    min: float | None = None
    max: float | None = None
    choices: tuple | None = None

    def check(self, algo: str, value: Any) -> Any:
        where = f"option {self.name!r} of algorithm {algo!r}"
        if self.type is bool:
            if not isinstance(value, bool):
                raise ConfigError(f"{where} must be true or false, got {value!r}")
            return value
        if self.type is int:
            if isinstance(value, bool) or not isinstance(value, int):
                if isinstance(value, float) and value.is_integer():
                    value = int(value)
                else:
                    raise ConfigError(f"{where} must be an integer, got {value!r}")
        elif self.type is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value != value:
                raise ConfigError(f"{where} must be a number, got {value!r}")
            value = float(value)
        elif not isinstance(value, self.type):
            raise ConfigError(f"{where} must be of type {self.type.__name__}, got {value!r}")
        if self.choices is not None and value not in self.choices:
            raise ConfigError(f"{where} must be one of {list(self.choices)}, got {value!r}")
        if self.min is not None and value < self.min or self.max is not None and value > self.max:
            raise ConfigError(f"{where} must lie in [{self.min}, {self.max}], got {value!r}")
        return value

    def describe(self) -> str:
        rng = ""
        if self.choices is not None:
            rng = f" one of {list(self.choices)}"
        elif self.min is not None or self.max is not None:
            rng = f" in [{self.min}, {self.max}]"
        return f"{self.name}={self.default!r} ({self.type.__name__}{rng}): {self.help}"


def resolve_options(declared: Sequence[Option], given: Mapping[str, Any] | None, algo: str) -> dict[str, Any]:
    """Every declared option's value, in declaration order: given ones checked, the others
    their defaults. Unknown names are one ConfigError listing the valid ones."""
    given = dict(given or {})
    known = {o.name: o for o in declared}
    unknown = sorted(set(given) - set(known))
    if unknown:
        valid = ", ".join(known) or "none"
        raise ConfigError(f"unknown option(s) {unknown} for algorithm {algo!r}; valid options: {valid}")
    return {k: (o.check(algo, given[k]) if k in given else o.default) for k, o in known.items()}
