"""Every Postgres store turns an unreachable Postgres into StoreUnavailable (UNAVAILABLE at
the gRPC boundary, not INTERNAL): each public coroutine method of each ``*Store`` class in
``adapters/postgres`` is wrapped by ``translated`` (the class decorated
``translated_methods``) or marked ``translates_inline``. A store class that lost its
decorator (two did, once, when dataclasses were inserted above them) fails here."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

import pytest

import authswitch.adapters.postgres as package
from authswitch.adapters.postgres.errors import translated_methods

pytestmark = pytest.mark.timeout(30)


def _stores() -> list[type]:
    found = []
    for info in pkgutil.iter_modules(package.__path__):
        module = importlib.import_module(f"{package.__name__}.{info.name}")
        found += [
            cls
            for name, cls in vars(module).items()
            if inspect.isclass(cls) and name.endswith("Store") and cls.__module__ == module.__name__
        ]
    return found


def _untranslated(cls: type) -> list[str]:
    return [
        name
        for name, member in vars(cls).items()
        if not name.startswith("_")
        and inspect.iscoroutinefunction(member)
        and not hasattr(member, "__wrapped__")
        and not getattr(member, "_authswitch_translates_inline", False)
    ]


def test_there_are_stores_to_check() -> None:
    assert len(_stores()) >= 10


@pytest.mark.parametrize("store", _stores(), ids=lambda cls: cls.__name__)
def test_every_store_method_translates_an_unreachable_postgres(store: type) -> None:
    assert _untranslated(store) == []


def test_the_check_finds_an_undecorated_store() -> None:
    class PlainStore:
        async def read(self) -> None: ...

    assert _untranslated(PlainStore) == ["read"]
    assert _untranslated(translated_methods(PlainStore)) == []
