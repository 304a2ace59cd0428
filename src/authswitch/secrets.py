"""Named secrets of programs: client bearer tokens, TLS material, webhook keys.

The database holds only names; the values come from the environment
(``AUTHSWITCH_SECRET_<NAME>``, the name upper-cased with ``-`` as ``_``) or from the file
``<AUTHSWITCH_SECRETS_DIR>/<name>`` (a mounted Kubernetes Secret). Values are never logged.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from pathlib import Path

from authswitch.errors import PreconditionFailed

__all__ = ["SecretStore"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$")


class SecretStore:
    def __init__(self, directory: Path | None, env: Mapping[str, str] | None = None) -> None:
        self.directory = directory
        self._env = os.environ if env is None else env

    @staticmethod
    def valid_name(name: str) -> bool:
        return bool(_NAME.match(name))

    def get(self, name: str) -> bytes:
        """The secret's value; raises PreconditionFailed when it is not configured."""
        if not self.valid_name(name):
            raise PreconditionFailed(f"invalid secret name {name!r}")
        env_name = "AUTHSWITCH_SECRET_" + name.upper().replace("-", "_").replace(".", "_")
        value = self._env.get(env_name)
        if value is not None:
            return value.encode()
        if self.directory is not None:
            path = self.directory / name
            if path.is_file():
                return path.read_bytes().strip()
        raise PreconditionFailed(f"secret {name!r} is not configured")

    def get_text(self, name: str) -> str:
        return self.get(name).decode()
