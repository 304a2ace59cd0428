"""Spend controls between the wire (``ledger_admin.proto``) and the domain."""

from __future__ import annotations

from collections.abc import Iterable

from authswitch.domain.controls import (
    CardPresence,
    ControlPeriod,
    ControlSubject,
    ControlVersion,
    DeclineRule,
    MccRange,
    SpendControls,
    SpendLimit,
    VelocityRule,
)
from authswitch.errors import RequestError
from authswitch.v1 import ledger_admin_pb2 as la

__all__ = ["control_subject", "controls_from_message", "controls_message", "version_message"]

_SUBJECTS = {la.CONTROL_SUBJECT_CARD: ControlSubject.CARD,
             la.CONTROL_SUBJECT_ACCOUNT: ControlSubject.ACCOUNT}  # fmt: skip
_PERIODS = {
    la.PERIOD_TRANSACTION: ControlPeriod.TRANSACTION,
    la.PERIOD_DAY: ControlPeriod.DAY,
    la.PERIOD_MONTH: ControlPeriod.MONTH,
    la.PERIOD_LIFETIME: ControlPeriod.LIFETIME,
}
_PRESENCES = {
    la.CARD_PRESENCE_CONTROL_UNSPECIFIED: CardPresence.ANY,
    la.CARD_PRESENCE_CONTROL_PRESENT_ONLY: CardPresence.PRESENT_ONLY,
    la.CARD_PRESENCE_CONTROL_NOT_PRESENT_ONLY: CardPresence.NOT_PRESENT_ONLY,
}


def control_subject(value: int) -> ControlSubject:
    subject: ControlSubject | None = _SUBJECTS.get(value)  # type: ignore[call-overload]
    if subject is None:
        raise RequestError("subject must be CONTROL_SUBJECT_CARD or CONTROL_SUBJECT_ACCOUNT")
    return subject


def controls_from_message(message: la.SpendControls) -> SpendControls:
    """The domain set of a request (checked further by ``domain.controls.problem``)."""
    presence = _PRESENCES.get(message.card_presence)
    if presence is None:
        raise RequestError("card_presence must be a known value")
    limits = []
    for x in message.limits:
        period = _PERIODS.get(x.period)
        if period is None:
            raise RequestError(
                f"limit {x.name!r}: period must be TRANSACTION, DAY, MONTH or LIFETIME"
            )
        limits.append(
            SpendLimit(
                name=x.name, period=period, asset=x.asset,
                amount_max_minor=x.amount_max_minor if x.HasField("amount_max_minor") else None,
                count_max=x.count_max if x.HasField("count_max") else None,
                transaction_types=frozenset(int(t) for t in x.transaction_types),
            )
        )  # fmt: skip
    rules = [
        DeclineRule(
            name=r.name, channels=frozenset(int(c) for c in r.channels),
            pos_entry_modes=frozenset(int(m) for m in r.pos_entry_modes),
            transaction_types=frozenset(int(t) for t in r.transaction_types),
            without_three_ds=r.without_three_ds,
            amount_above_minor=r.amount_above_minor if r.HasField("amount_above_minor") else None,
            asset=r.asset,
            network_risk_score_min=(
                r.network_risk_score_min if r.HasField("network_risk_score_min") else None
            ),
            card_not_present=r.card_not_present, stored_credential=r.stored_credential,
        )
        for r in message.decline_rules
    ]  # fmt: skip
    return SpendControls(
        allowed_mccs=frozenset(message.allowed_mccs),
        allowed_mcc_ranges=_ranges(message.allowed_mcc_ranges),
        blocked_mccs=frozenset(message.blocked_mccs),
        blocked_mcc_ranges=_ranges(message.blocked_mcc_ranges),
        allowed_countries=frozenset(message.allowed_countries),
        blocked_countries=frozenset(message.blocked_countries),
        allowed_merchant_ids=frozenset(message.allowed_merchant_ids),
        blocked_merchant_ids=frozenset(message.blocked_merchant_ids),
        allowed_channels=frozenset(int(c) for c in message.allowed_channels),
        card_presence=presence,
        limits=tuple(limits),
        decline_rules=tuple(rules),
        replace_product_limits=message.replace_product_limits,
        velocity_rules=tuple(
            VelocityRule(
                name=v.name, window_s=v.window_s,
                approvals_max=v.approvals_max if v.HasField("approvals_max") else None,
                amount_max_minor=v.amount_max_minor if v.HasField("amount_max_minor") else None,
                asset=v.asset,
                declines_max=v.declines_max if v.HasField("declines_max") else None,
            )
            for v in message.velocity_rules
        ),
    )  # fmt: skip


def _ranges(ranges: Iterable[la.MccRange]) -> tuple[MccRange, ...]:
    return tuple(MccRange(r.from_mcc, r.to_mcc) for r in ranges)


def controls_message(controls: SpendControls) -> la.SpendControls:
    periods = {v: k for k, v in _PERIODS.items()}
    presences = {v: k for k, v in _PRESENCES.items()}
    message = la.SpendControls(
        allowed_mccs=sorted(controls.allowed_mccs),
        allowed_mcc_ranges=[la.MccRange(from_mcc=r.from_mcc, to_mcc=r.to_mcc)
                            for r in controls.allowed_mcc_ranges],
        blocked_mccs=sorted(controls.blocked_mccs),
        blocked_mcc_ranges=[la.MccRange(from_mcc=r.from_mcc, to_mcc=r.to_mcc)
                            for r in controls.blocked_mcc_ranges],
        allowed_countries=sorted(controls.allowed_countries),
        blocked_countries=sorted(controls.blocked_countries),
        allowed_merchant_ids=sorted(controls.allowed_merchant_ids),
        blocked_merchant_ids=sorted(controls.blocked_merchant_ids),
        allowed_channels=sorted(controls.allowed_channels),  # type: ignore[arg-type]
        card_presence=presences[controls.card_presence],
        replace_product_limits=controls.replace_product_limits,
    )  # fmt: skip
    for x in controls.limits:
        limit = message.limits.add(
            name=x.name, period=periods[x.period], asset=x.asset,
            transaction_types=sorted(x.transaction_types),
        )  # fmt: skip
        if x.amount_max_minor is not None:
            limit.amount_max_minor = x.amount_max_minor
        if x.count_max is not None:
            limit.count_max = x.count_max
    for r in controls.decline_rules:
        rule = message.decline_rules.add(
            name=r.name, channels=sorted(r.channels),
            pos_entry_modes=sorted(r.pos_entry_modes),
            transaction_types=sorted(r.transaction_types),
            without_three_ds=r.without_three_ds, asset=r.asset,
            card_not_present=r.card_not_present, stored_credential=r.stored_credential,
        )  # fmt: skip
        if r.amount_above_minor is not None:
            rule.amount_above_minor = r.amount_above_minor
        if r.network_risk_score_min is not None:
            rule.network_risk_score_min = r.network_risk_score_min
    for v in controls.velocity_rules:
        rule_message = message.velocity_rules.add(name=v.name, window_s=v.window_s, asset=v.asset)
        if v.approvals_max is not None:
            rule_message.approvals_max = v.approvals_max
        if v.amount_max_minor is not None:
            rule_message.amount_max_minor = v.amount_max_minor
        if v.declines_max is not None:
            rule_message.declines_max = v.declines_max
    return message


def version_message(version: ControlVersion) -> la.SpendControlsVersion:
    subjects = {v: k for k, v in _SUBJECTS.items()}
    message = la.SpendControlsVersion(
        subject=subjects[version.subject],
        subject_id=version.subject_id,
        version=version.version,
        controls=controls_message(version.controls),
    )
    message.effective_from.FromDatetime(version.effective_from)
    message.created_at.FromDatetime(version.created_at)
    return message
