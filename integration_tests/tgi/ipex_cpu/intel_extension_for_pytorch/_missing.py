"""Names TGI imports from IPEX but a Llama model on one CPU never calls."""

from __future__ import annotations

from typing import Any, NoReturn


def missing(qualname: str) -> Any:
    """A callable (also usable as a class) that raises ``NotImplementedError`` naming ``qualname``."""

    def fail(*_args: Any, **_kwargs: Any) -> NoReturn:
        raise NotImplementedError(
            f"intel_extension_for_pytorch.{qualname} is not implemented by specplug's CPU stand-in "
            f"(integration_tests/tgi/ipex_cpu); only the kernels a Llama model reaches are"
        )

    fail.__name__ = fail.__qualname__ = qualname.rsplit(".", 1)[-1]
    return fail


class Namespace:
    """An attribute namespace whose listed names all raise when called."""

    def __init__(self, prefix: str, names: list[str]):
        for name in names:
            setattr(self, name, missing(f"{prefix}.{name}"))
