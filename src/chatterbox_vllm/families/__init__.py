"""The model families a server can load, by name: the one place a variant is told from another.

`register` adds a family (a test may add its own), `get` finds one by its name, `all_families` lists them in the
order they were registered, `unregister` takes one away again. The four published families register on import.
"""

from __future__ import annotations

from .base import ModelFamily, RandomRecipe

_REGISTRY: dict[str, ModelFamily] = {}


def register(family: ModelFamily) -> ModelFamily:
    """Add `family` under its name; a second family of the same name, or one claiming another's T3 file or a model
    name already taken, is refused."""
    if family.name in _REGISTRY:
        raise ValueError(f"a model family named {family.name!r} is already registered")
    names = {family.name, *family.hub_aliases, *([family.random_model] if family.random_model else [])}
    for other in _REGISTRY.values():
        if other.layout.t3 == family.layout.t3:
            raise ValueError(f"{family.name}: T3 file {family.layout.t3} is already {other.name}'s")
        taken = names & {other.name, *other.hub_aliases, other.random_model}
        if taken:
            raise ValueError(f"{family.name}: model names {sorted(taken)} already name {other.name}")
    _REGISTRY[family.name] = family
    return family


def unregister(name: str) -> None:
    _REGISTRY.pop(name, None)


def get(name: str) -> ModelFamily:
    """The family called `name`; ValueError naming the known ones otherwise."""
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(f"unknown model family {name!r} (expected one of {', '.join(_REGISTRY)})") from None


def resolve(family: str | ModelFamily) -> ModelFamily:
    """A family given by name or as itself."""
    return family if isinstance(family, ModelFamily) else get(family)


def all_families() -> tuple[ModelFamily, ...]:
    return tuple(_REGISTRY.values())


def names() -> tuple[str, ...]:
    return tuple(_REGISTRY)


from . import english, multilingual, nano, turbo  # noqa: E402, F401, I001  (each registers itself, in this order)

__all__ = ["ModelFamily", "RandomRecipe", "register", "unregister", "get", "resolve", "all_families", "names"]
