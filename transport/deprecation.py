"""Names a module no longer defines, kept working for a while with a DeprecationWarning.

Every package of aiowt uses it the same way, at the end of a module::

    __getattr__ = deprecated_names(__name__, {"OldName": ("NewName", lambda: NewName)})

Python calls a module's ``__getattr__`` only for names the module does not have, so
current names cost nothing; an old one warns once per access, naming its replacement,
and resolves lazily (the lambda), so moving a name never creates an import cycle.
"""

from __future__ import annotations

import importlib
import warnings
from collections.abc import Callable, Mapping

__all__ = ["deprecated_names", "moved_to"]

Entry = tuple[str, Callable[[], object]]
"""What to use now, and how to get the value."""


def moved_to(module: str, name: str) -> Entry:
    """The entry of a name that is now `module.name` (imported when first asked for)."""
    return f"{module}.{name}", lambda: getattr(importlib.import_module(module), name)


def deprecated_names(module: str, names: Mapping[str, Entry]) -> Callable[[str], object]:
    """A module ``__getattr__`` for `names`: old name -> (what to use now, the value)."""

    def __getattr__(name: str) -> object:
        if name not in names:
            raise AttributeError(f"module {module!r} has no attribute {name!r}")
        new, value = names[name]
        warnings.warn(f"{module}.{name} is deprecated; use {new}", DeprecationWarning, stacklevel=2)
        return value()

    return __getattr__
