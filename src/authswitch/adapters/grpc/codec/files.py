"""File schedules (service/files.py) on the wire: a CreateFileSchedule request's schedule
as a domain value, and a stored schedule as a message."""

from __future__ import annotations

from authswitch.domain.files import FileKind, ScheduleRow
from authswitch.domain.messages.admin import NewFileSchedule, SftpDestination
from authswitch.v1 import ledger_admin_pb2

__all__ = ["new_file_schedule_of", "schedule_message"]

_KINDS = {
    ledger_admin_pb2.FILE_KIND_BALANCES: FileKind.BALANCES,
    ledger_admin_pb2.FILE_KIND_TRANSACTIONS: FileKind.TRANSACTIONS,
    ledger_admin_pb2.FILE_KIND_CHARGEBACKS: FileKind.CHARGEBACKS,
    ledger_admin_pb2.FILE_KIND_SUBLEDGER: FileKind.SUBLEDGER,
    ledger_admin_pb2.FILE_KIND_FBO: FileKind.FBO,
    ledger_admin_pb2.FILE_KIND_SETTLEMENT: FileKind.SETTLEMENT,
    ledger_admin_pb2.FILE_KIND_SUBLEDGER_SYNC: FileKind.SUBLEDGER_SYNC,
}
_WIRE_KINDS = {kind: wire for wire, kind in _KINDS.items()}


def new_file_schedule_of(schedule: ledger_admin_pb2.FileSchedule) -> NewFileSchedule:
    """The schedule to create; its destination is the one the oneof holds, if any."""
    destination = schedule.WhichOneof("destination")
    sftp = schedule.sftp
    return NewFileSchedule(
        kind=_KINDS.get(schedule.kind),
        client_id=schedule.client_id,
        program_id=schedule.program_id,
        cron=schedule.cron,
        time_zone=schedule.time_zone,
        prefix=schedule.prefix,
        directory=schedule.directory if destination == "directory" else None,
        sftp=SftpDestination(
            host=sftp.host, port=sftp.port, username=sftp.username, key_secret=sftp.key_secret,
            known_hosts_secret=sftp.known_hosts_secret, remote_dir=sftp.remote_dir,
        ) if destination == "sftp" else None,
    )  # fmt: skip


def schedule_message(row: ScheduleRow) -> ledger_admin_pb2.FileSchedule:
    message = ledger_admin_pb2.FileSchedule(
        schedule_id=row.id,
        kind=_WIRE_KINDS[row.file_kind],
        client_id=row.client_id or "",
        program_id=row.program_id or "",
        cron=row.cron,
        time_zone=row.time_zone,
        prefix=row.prefix,
        enabled=row.enabled,
    )
    if row.sink == "directory":
        message.directory = row.directory
    else:
        message.sftp.CopyFrom(
            ledger_admin_pb2.SftpDestination(
                host=row.sftp_host, port=row.sftp_port, username=row.sftp_user,
                key_secret=row.sftp_key_secret, known_hosts_secret=row.sftp_known_hosts_secret,
                remote_dir=row.remote_dir,
            )
        )  # fmt: skip
    return message
