"""Installs the CPU test stand-ins; see sitecustomize.py."""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
import types

_PLATFORM_MODULE = "sglang.srt.runtime_context"


class _InertModule(types.ModuleType):
    """A module whose every attribute is another inert object (torchvision stub)."""

    __path__: list = []

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)
        sub = _InertModule(f"{self.__name__}.{name}")
        setattr(self, name, sub)
        return sub

    def __call__(self, *args, **kwargs):
        raise RuntimeError(f"{self.__name__} is a stub (torchvision is not usable in this test env)")

    def __mro_entries__(self, bases):
        return (object,)


def _imported_by_sglang() -> bool:
    """True when the innermost non-import-machinery frame belongs to an sglang module
    (transformers probes for torchvision too, and must keep seeing it absent)."""
    frame = sys._getframe(2)
    while frame is not None:
        mod = frame.f_globals.get("__name__", "")
        if not (mod.startswith("importlib") or mod == __name__ or mod.startswith("_frozen")):
            return mod == "sglang" or mod.startswith("sglang.")
        frame = frame.f_back
    return False


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def __init__(self):
        self._busy = set()
        self._real_torchvision = None

    def find_spec(self, name, path=None, target=None):
        if name == "torchvision" or name.startswith("torchvision."):
            if not _imported_by_sglang() or self._has_real_torchvision():
                return None
            return importlib.machinery.ModuleSpec(name, self, is_package=True)
        if name == _PLATFORM_MODULE and name not in self._busy:
            self._busy.add(name)
            try:
                spec = importlib.util.find_spec(name)
            finally:
                self._busy.discard(name)
            if spec is None:
                return None
            real_loader = spec.loader

            class _Wrap(importlib.abc.Loader):
                def create_module(self, spec):
                    return real_loader.create_module(spec)

                def exec_module(self, module):
                    real_loader.exec_module(module)
                    module.override_platform(has_amx=True).install()

            spec.loader = _Wrap()
            return spec
        return None

    def _has_real_torchvision(self):
        if self._real_torchvision is None:
            self._real_torchvision = False
            sys.meta_path.remove(self)
            try:
                import torchvision  # noqa: F401

                self._real_torchvision = True
            except Exception:
                for key in [k for k in sys.modules if k == "torchvision" or k.startswith("torchvision.")]:
                    del sys.modules[key]
            finally:
                sys.meta_path.insert(0, self)
        return self._real_torchvision

    def create_module(self, spec):
        return _InertModule(spec.name)

    def exec_module(self, module):
        pass


def install():
    if any(isinstance(f, _Finder) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _Finder())
