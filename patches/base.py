"""Version-pinned runtime patches: one class per patched target.

A :class:`Patch` names one attribute of one module (a module-level function, or a
method of a class in that module) and builds its replacement from the original.
Applying a patch

- fails loudly (:class:`PatchError`) when the module lacks the symbol, when the
  symbol's source no longer matches a known fingerprint (the engine changed the code
  the replacement was written against), or when it is already patched;
- keeps the original (``patch.original``, and ``__wrapped__`` on the replacement) and
  marks the replacement so that a second patch of the same target is refused;
- optionally rebinds ``from module import name`` aliases: modules already imported
  under ``alias_prefix`` that hold the original object by name get the replacement too
  (modules imported later pick up the replacement by themselves);
- is logged, and undone by :meth:`Patch.revert` (tests).

A :class:`PatchSet` groups the patches of one engine with the engine's supported
version range: the version is checked once, before the first patch applies.
Nothing here imports an engine; SGLang and TGI patches both build on it.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
import re
import sys
import textwrap
import types
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

from specplug.drafters.errors import SpecplugError

__all__ = ["PatchError", "Patch", "PatchSet", "source_fingerprint", "object_fingerprint", "parse_version", "log"]

_MARK = "__specplug_patch__"


class PatchError(SpecplugError, RuntimeError):
    """A patch cannot be applied: wrong engine version, missing or changed symbol, double patch."""


def log(level: str, message: str) -> None:
    """Log through loguru when the engine uses it (TGI does: its launcher shows those lines),
    else through the standard ``logging`` module."""
    lg = sys.modules.get("loguru")
    if lg is not None:
        getattr(lg.logger.opt(depth=1), level)(message)
    else:
        getattr(logging.getLogger("specplug"), "warning" if level == "warning" else level)(message)


# ------------------------------------------------------------------ fingerprints
_DEF = re.compile(r"^\s*(async\s+def|def|class)\s")


def source_fingerprint(source: str) -> str:
    """Short sha256 of a function's source text from its ``def`` line (decorators dropped,
    dedented, trailing whitespace stripped). Computed the same way from a source file
    (tests read TGI's files with ``ast``) and from a live object (``inspect.getsource``)."""
    lines = source.splitlines()
    start = next((i for i, line in enumerate(lines) if _DEF.match(line)), 0)
    text = textwrap.dedent("\n".join(lines[start:])).rstrip()
    text = "\n".join(line.rstrip() for line in text.splitlines())
    return hashlib.sha256(text.encode("utf-8")).hexdigest()[:16]


def object_fingerprint(obj: Any) -> str | None:
    """:func:`source_fingerprint` of a live function (decorator wrappers unwrapped), or None
    when its source cannot be read."""
    fn = getattr(obj, "__func__", obj)
    try:
        fn = inspect.unwrap(fn)
        return source_fingerprint(inspect.getsource(fn))
    except (OSError, TypeError, ValueError):
        return None


def parse_version(text: str) -> tuple[int, int, int] | None:
    """``"3.3.6"``, ``"3.3.6-dev0"``, ``"text-generation-launcher 3.3.5"`` -> (3, 3, 6) etc.;
    pre-release suffixes are ignored (a ``-dev0`` build counts as its release)."""
    m = re.search(r"(\d+)\.(\d+)\.(\d+)", str(text))
    return None if m is None else (int(m.group(1)), int(m.group(2)), int(m.group(3)))


# ------------------------------------------------------------------ one patch
class Patch:
    """Replace ``module.target`` (``"func"`` or ``"Class.method"``).

    Subclasses set :attr:`module`, :attr:`target` and implement :meth:`replacement`.
    """

    #: dotted module name that defines the target
    module: ClassVar[str] = ""
    #: ``"name"`` (module attribute) or ``"Class.name"`` (class attribute)
    target: ClassVar[str] = ""
    #: accepted :func:`source_fingerprint` values of the original; empty: not checked
    fingerprints: ClassVar[frozenset[str]] = frozenset()
    #: rebind aliases of the original in loaded modules whose name starts with this
    alias_prefix: ClassVar[str | None] = None
    #: engine name and supported versions for error messages (set by the PatchSet)
    supported_text: ClassVar[str] = ""

    def __init__(self) -> None:
        self.original: Any = None
        self.owner: Any = None
        self.applied = False
        self.aliases: list[tuple[types.ModuleType, str]] = []

    # -- to implement
    def replacement(self, original: Callable) -> Callable:
        raise NotImplementedError

    # -- mechanics
    @property
    def qualname(self) -> str:
        return f"{self.module}.{self.target}"

    def _fail(self, why: str) -> PatchError:
        hint = f" specplug supports {self.supported_text}." if self.supported_text else ""
        return PatchError(f"cannot patch {self.qualname} ({type(self).__name__}): {why}.{hint}")

    def _resolve(self, module: types.ModuleType | None) -> tuple[Any, str, Any]:
        if module is None:
            module = sys.modules.get(self.module)
            if module is None:
                raise self._fail("the module is not imported")
        owner: Any = module
        *path, attr = self.target.split(".")
        for part in path:
            owner = getattr(owner, part, None)
            if owner is None:
                raise self._fail(f"{self.module} has no {part!r}")
        space = owner.__dict__ if isinstance(owner, type) else vars(owner)
        if attr not in space:
            raise self._fail(f"{self.module} has no {self.target!r}")
        return owner, attr, space[attr]

    def check(self, module: types.ModuleType | None = None) -> None:
        """Raise :class:`PatchError` unless the target exists, is unpatched and matches."""
        _, _, raw = self._resolve(module)
        func = getattr(raw, "__func__", raw)
        mark = getattr(func, _MARK, None)
        if mark is not None:
            raise self._fail(f"already patched by {type(mark).__name__}; patching twice is refused")
        if self.fingerprints:
            fp = object_fingerprint(func)
            if fp is None:
                log(
                    "warning", f"specplug: cannot read the source of {self.qualname} to check it; patching it unchecked"
                )
            elif fp not in self.fingerprints:
                raise self._fail(
                    f"its code differs from the code this patch was written against "
                    f"(fingerprint {fp}, expected one of {sorted(self.fingerprints)})"
                )

    def apply(self, module: types.ModuleType | None = None) -> Patch:
        if self.applied:
            raise self._fail("this patch object is already applied")
        self.check(module)
        owner, attr, raw = self._resolve(module)
        func = getattr(raw, "__func__", raw)
        new = self.replacement(func)
        setattr(new, _MARK, self)
        new.__wrapped__ = func
        if isinstance(raw, classmethod):
            new = classmethod(new)
        elif isinstance(raw, staticmethod):
            new = staticmethod(new)
        setattr(owner, attr, new)
        self.owner, self.original, self.applied = owner, raw, True
        if self.alias_prefix and "." not in self.target:
            self._rebind_aliases(raw, new)
        where = "" if not self.aliases else f" (and its aliases in {', '.join(m.__name__ for m, _ in self.aliases)})"
        log("info", f"specplug: {type(self).__name__} replaced {self.qualname}{where}")
        return self

    def _rebind_aliases(self, old: Any, new: Any) -> None:
        for name, mod in list(sys.modules.items()):
            if mod is None or name == self.module or not name.startswith(self.alias_prefix):
                continue
            for key, value in list(vars(mod).items()):
                if value is old:
                    setattr(mod, key, new)
                    self.aliases.append((mod, key))

    def revert(self) -> None:
        if not self.applied:
            return
        attr = self.target.split(".")[-1]
        current = self.owner.__dict__[attr] if isinstance(self.owner, type) else getattr(self.owner, attr)
        if getattr(getattr(current, "__func__", current), _MARK, None) is not self:
            raise self._fail("it was re-patched by someone else; revert that first")
        setattr(self.owner, attr, self.original)
        for mod, key in self.aliases:
            setattr(mod, key, self.original)
        self.aliases.clear()
        self.applied = False
        log("info", f"specplug: {type(self).__name__} restored {self.qualname}")


# ------------------------------------------------------------------ an engine's patches
class PatchSet:
    """The patches of one engine, applied module by module as the engine imports them.

    ``detect_version()`` returns ``(version_text, how_found)``; it runs once, before the
    first patch, and :meth:`apply_for` refuses every patch outside ``supported``
    (inclusive (major, minor, patch) bounds).
    """

    def __init__(
        self,
        engine: str,
        supported: tuple[tuple[int, int, int], tuple[int, int, int]],
        patches: Sequence[type[Patch]],
        detect_version: Callable[[], tuple[str, str]],
        supported_text: str | None = None,
    ):
        self.engine = engine
        self.supported = supported
        self.patch_types = list(patches)
        self.detect_version = detect_version
        lo, hi = supported
        self.supported_text = supported_text or (f"{engine} {'.'.join(map(str, lo))} through {'.'.join(map(str, hi))}")
        self.version: str | None = None
        self.applied: list[Patch] = []

    @property
    def modules(self) -> list[str]:
        return sorted({p.module for p in self.patch_types})

    def check_version(self) -> str:
        if self.version is None:
            text, how = self.detect_version()
            v = parse_version(text)
            lo, hi = self.supported
            if v is None or not (lo <= v <= hi):
                raise PatchError(
                    f"{self.engine} version {text!r} ({how}) is not supported: specplug supports {self.supported_text}"
                )
            self.version = text
            log("info", f"specplug: {self.engine} {text} ({how}) is supported")
        return self.version

    def apply_for(self, module: types.ModuleType) -> list[Patch]:
        """Apply every patch whose target lives in ``module`` (all checked before any applies)."""
        self.check_version()
        todo = []
        for cls in self.patch_types:
            if cls.module != module.__name__:
                continue
            if any(type(p) is cls for p in self.applied):
                raise PatchError(f"{cls.__name__} is already applied; patching twice is refused")
            patch = cls()
            patch.supported_text = self.supported_text
            todo.append(patch)
        for patch in todo:
            patch.check(module)
        for patch in todo:
            self.applied.append(patch.apply(module))
        return todo

    def revert_all(self) -> None:
        while self.applied:
            self.applied.pop().revert()

    def is_applied(self, patch_type: type[Patch]) -> bool:
        return any(type(p) is patch_type for p in self.applied)


def applied_patch(obj: Any) -> Patch | None:
    """The :class:`Patch` that installed ``obj`` (a function, method or descriptor), if any."""
    return getattr(getattr(obj, "__func__", obj), _MARK, None)


__all__.append("applied_patch")
