"""The admin API's requests and replies that services take and return (service/admin.py,
service/accounts.py, service/files.py), as plain values; the codec
(``authswitch.adapters.grpc.codec.admin``) converts them to and from the wire."""

from __future__ import annotations

from dataclasses import dataclass

from authswitch.domain.files import FileKind
from authswitch.domain.ledger import Balance

__all__ = [
    "Adjustment",
    "AdjustmentAnswer",
    "NewFileSchedule",
    "SftpDestination",
    "Transfer",
    "TransferAnswer",
]


@dataclass(frozen=True, slots=True)
class Adjustment:
    """A CreditAccount (``credit``) or DebitAccount request."""

    account_id: str
    amount_minor: int
    asset: str
    # The purpose's name (LOAD, FEE, ...); "" when the request names none or an unknown one.
    purpose: str
    idempotency_key: str
    description: str
    credit: bool
    allow_negative: bool


@dataclass(frozen=True, slots=True)
class AdjustmentAnswer:
    """What an approved adjustment answers: its journal entry and the account's balance in
    the asset right after it."""

    entry_id: str
    asset: str
    balance: Balance


@dataclass(frozen=True, slots=True)
class Transfer:
    """A Transfer request between two accounts of one customer."""

    from_account_id: str
    to_account_id: str
    amount_minor: int
    asset: str
    idempotency_key: str
    description: str


@dataclass(frozen=True, slots=True)
class TransferAnswer:
    """What an approved transfer answers: its journal entry and the source's balance in the
    asset right after it."""

    entry_id: str
    asset: str
    from_balance: Balance


@dataclass(frozen=True, slots=True)
class SftpDestination:
    """An SFTP server to deliver files to, as given (0 and "" where nothing was given)."""

    host: str = ""
    port: int = 0
    username: str = ""
    key_secret: str = ""
    known_hosts_secret: str = ""
    remote_dir: str = ""


@dataclass(frozen=True, slots=True)
class NewFileSchedule:
    """A CreateFileSchedule request: ``kind`` None when it names no known file kind; at
    most one of ``directory`` and ``sftp`` is given (neither: no destination)."""

    kind: FileKind | None
    client_id: str
    program_id: str
    cron: str
    time_zone: str
    prefix: str
    directory: str | None
    sftp: SftpDestination | None
