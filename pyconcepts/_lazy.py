"""Lazily imported public names of a package (PEP 562), so importing it stays cheap."""

from __future__ import annotations

import importlib
from collections.abc import Mapping
from typing import Any, Callable, Optional, Union

Target = Union[str, tuple[str, Optional[str]]]


def lazy_exports(
    package: str, exports: Mapping[str, Target], namespace: dict[str, Any]
) -> tuple[Callable[[str], Any], Callable[[], list[str]]]:
    """The package's ``__getattr__`` and ``__dir__`` for ``exports``: name → module path (the
    module's attribute of the same name) or ``(module path, attribute)`` (``None``: the module
    itself). A name is imported on first use and then bound in ``namespace``."""

    def __getattr__(name: str) -> Any:
        if name not in exports:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        target = exports[name]
        module_name, attr = (target, name) if isinstance(target, str) else target
        module = importlib.import_module(module_name)
        value = module if attr is None else getattr(module, attr)
        namespace[name] = value
        return value

    def __dir__() -> list[str]:
        return sorted(namespace.get("__all__", exports))

    return __getattr__, __dir__
