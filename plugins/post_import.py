"""Post-import hooks: run a callback right after a named module finishes importing.

A meta-path finder sees every import; for the few module names that have hooks it
asks the rest of ``sys.meta_path`` for the real spec and wraps its loader so that the
callbacks run after the module's code. A callback that raises makes the import
raise (a patch that cannot apply stops the engine with its message rather than
letting it run unpatched). Hooks registered for a module that is already imported
run at once. Imported at interpreter start-up (from a ``.pth`` line) when a specplug engine variable
is set, so it imports only what start-up already loaded (``importlib.abc`` alone would
pull ``importlib.resources``, ``tempfile``, ``pathlib``...): the finder and loader follow
the import protocol without subclassing its ABCs.
"""

import _thread
import sys

__all__ = ["register_post_import_hook", "remove_post_import_hooks", "pending_hooks"]

_lock = _thread.RLock()
_hooks = {}  # module name -> [callable(module)]


class _HookedLoader:
    def __init__(self, loader, name):
        self._loader = loader
        self._name = name

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module):
        self._loader.exec_module(module)
        _run_hooks(self._name, module)

    def __getattr__(self, item):  # get_source, is_package, get_filename, ...
        return getattr(self._loader, item)


class _Finder:
    def find_spec(self, fullname, path=None, target=None):
        if fullname not in _hooks:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _HookedLoader(spec.loader, fullname)
                return spec
        return None


_finder = _Finder()


def _run_hooks(name, module):
    with _lock:
        hooks = _hooks.pop(name, [])
        if not _hooks and _finder in sys.meta_path:
            sys.meta_path.remove(_finder)
    for i, hook in enumerate(hooks):
        try:
            hook(module)
        except BaseException:
            # the import fails (importlib drops the module); a retry fails the same way
            with _lock:
                _hooks.setdefault(name, [])[:0] = hooks[i:]
                if _finder not in sys.meta_path:
                    sys.meta_path.insert(0, _finder)
            raise


def register_post_import_hook(name, hook):
    """Call ``hook(module)`` once, after module ``name`` is imported (now, if it already is)."""
    with _lock:
        module = sys.modules.get(name)
        if module is None:
            _hooks.setdefault(name, []).append(hook)
            if _finder not in sys.meta_path:
                sys.meta_path.insert(0, _finder)
            return
    hook(module)


def remove_post_import_hooks(name=None):
    """Forget pending hooks (of one module, or all)."""
    with _lock:
        if name is None:
            _hooks.clear()
        else:
            _hooks.pop(name, None)
        if not _hooks and _finder in sys.meta_path:
            sys.meta_path.remove(_finder)


def pending_hooks():
    with _lock:
        return {k: len(v) for k, v in _hooks.items()}
