"""A test session leaves nothing in the temporary directory: the stores' scratch directory
(the embedded servers' data, tens of MB a run) is removed at the end of the session, also
when the session fails."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.support.stores import open_stores

pytestmark = pytest.mark.timeout(90)


async def test_scratch_directory_is_removed_after_the_session() -> None:
    async with open_stores() as stores:
        scratch = stores.scratch_dir
        assert scratch.is_dir()
        assert scratch.name.startswith("authswitch-test-")
    assert not scratch.exists()


async def test_scratch_directory_is_removed_when_the_session_fails() -> None:
    class Failed(Exception):
        pass

    seen: list[Path] = []

    async def failing_session() -> None:
        async with open_stores() as stores:
            seen.append(stores.scratch_dir)
            (stores.scratch_dir / "left-behind").write_text("x")
            raise Failed

    with pytest.raises(Failed):
        await failing_session()
    (scratch,) = seen
    assert not scratch.exists()
