"""Who may call what: TLS or mutual TLS on the server, and per-caller authorisation.

Two roles: the **gateway** may call ``AuthorizationService``, the **admin** may call
``LedgerAdminService``; health and reflection are open. A caller proves its role by its
client certificate's subject common name (mutual TLS) or by a bearer token
(``authorization: Bearer <token>``), compared in constant time. With neither configured,
authorisation is off: the development default, announced at start-up.
"""

from __future__ import annotations

import contextvars
import hmac
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from authswitch.config import Settings
from authswitch.errors import ConfigError

__all__ = ["CALLER", "AccessPolicy", "server_credentials"]

# The authenticated caller of the current RPC ("cn:<name>", "token:<role>" or "anonymous").
CALLER: contextvars.ContextVar[str] = contextvars.ContextVar("caller", default="anonymous")

_ROLE_OF_SERVICE = {
    "authswitch.v1.AuthorizationService": "gateway",
    "authswitch.v1.LedgerAdminService": "admin",
}


def _read_tokens(path: str) -> tuple[bytes, ...]:
    if not path:
        return ()
    try:
        lines = Path(path).read_text().split()
    except OSError as exc:
        raise ConfigError(f"cannot read token file {path}: {exc.strerror}") from None
    if any(len(token) < 16 for token in lines):
        raise ConfigError(f"tokens in {path} must be at least 16 characters")
    return tuple(token.encode() for token in lines)


def _names(value: str) -> frozenset[str]:
    return frozenset(name.strip() for name in value.split(",") if name.strip())


@dataclass(frozen=True)
class AccessPolicy:
    tokens: dict[str, tuple[bytes, ...]] = field(default_factory=dict)
    subjects: dict[str, frozenset[str]] = field(default_factory=dict)

    @classmethod
    def from_settings(cls, settings: Settings) -> AccessPolicy:
        return cls(
            tokens={
                "gateway": _read_tokens(settings.gateway_token_file),
                "admin": _read_tokens(settings.admin_token_file),
            },
            subjects={
                "gateway": _names(settings.gateway_subjects),
                "admin": _names(settings.admin_subjects),
            },
        )

    @property
    def enabled(self) -> bool:
        return any(self.tokens.values()) or any(self.subjects.values())

    def caller(self, role: str, metadata: Any, auth_context: Any) -> str | None:
        """The caller's identity if it holds ``role``, else None."""
        for name in (auth_context or {}).get("x509_common_name", ()):
            text = name.decode(errors="replace") if isinstance(name, bytes) else str(name)
            if text in self.subjects.get(role, ()):
                return f"cn:{text}"
        header = ""
        for key, value in metadata or ():
            if key == "authorization":
                header = value if isinstance(value, str) else value.decode(errors="replace")
                break
        if header.startswith("Bearer "):
            given = header[len("Bearer ") :].encode()
            # Compare with every token, always: the time taken says nothing of which matched.
            matched = False
            for token in self.tokens.get(role, ()):
                matched |= hmac.compare_digest(given, token)
            if matched:
                return f"token:{role}"
        return None

    @staticmethod
    def role_for(service: str) -> str | None:
        return _ROLE_OF_SERVICE.get(service)


def server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS when a certificate is configured; mutual TLS when a client CA is too."""
    if not settings.tls_cert_file:
        if settings.tls_client_ca_file:
            raise ConfigError("AUTHSWITCH_TLS_CLIENT_CA_FILE needs AUTHSWITCH_TLS_CERT_FILE")
        return None
    if not settings.tls_key_file:
        raise ConfigError("AUTHSWITCH_TLS_CERT_FILE needs AUTHSWITCH_TLS_KEY_FILE")
    try:
        cert = Path(settings.tls_cert_file).read_bytes()
        key = Path(settings.tls_key_file).read_bytes()
        client_ca = (
            Path(settings.tls_client_ca_file).read_bytes() if settings.tls_client_ca_file else None
        )
    except OSError as exc:
        raise ConfigError(f"cannot read TLS material: {exc}") from None
    return grpc.ssl_server_credentials(
        [(key, cert)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )
