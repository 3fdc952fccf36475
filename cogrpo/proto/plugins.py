"""A family or reward of one's own, named in a config as "package.module:Attribute". Loading one imports that
module, i.e. runs its code, like any Python the user imports; the names are read from the user's own config."""

from __future__ import annotations

import importlib
import re

from cogrpo.proto.errors import InputError, first_line

PLUGIN_REF = re.compile(r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")


def is_plugin_ref(text: str | None) -> bool:
    return bool(text) and PLUGIN_REF.match(text) is not None


def load_plugin(ref: str) -> object:
    """The attribute `ref` names ("package.module:Attribute"), or one InputError line saying why not."""
    if not is_plugin_ref(ref):
        raise InputError(f"{ref!r} is not a plugin reference (package.module:Attribute)")
    module_name, attribute = ref.split(":")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise InputError(f"cannot import plugin module {module_name}: {first_line(exc)}") from None
    if not hasattr(module, attribute):
        raise InputError(f"plugin module {module_name} has no {attribute}")
    return getattr(module, attribute)


def plugin_attribute(ref: str, name: str) -> str:
    """A declared string attribute of a plugin class (what its samples are, what a reward scores)."""
    value = getattr(load_plugin(ref), name, None)
    if not isinstance(value, str):
        raise InputError(f"plugin {ref} does not declare {name} (a string such as 'images')")
    return value
