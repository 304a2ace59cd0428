"""Fee rules and limits on the wire (SetFeeSchedule, ListFeeSchedules, CreateLimit,
ListLimits): the wire's enums mapped to the domain's, an unknown one refused; what a rule or a
limit may be is the domain's to say (domain/fees.py, domain/limits.py)."""

from __future__ import annotations

import uuid

from authswitch.domain.fees import FeeRule, Region, Stage, rule_problem
from authswitch.domain.limits import Limit, Period, Subject, limit_problem
from authswitch.errors import RequestError
from authswitch.v1 import ledger_admin_pb2

__all__ = ["fee_rule_message", "fee_rule_of", "limit_message", "limit_of"]


def fee_rule_of(message: ledger_admin_pb2.FeeRule) -> FeeRule:
    """The domain rule of a wire rule; bad values are a RequestError (domain/fees.py
    says what a rule may be)."""
    stage = {
        ledger_admin_pb2.FEE_STAGE_AUTHORIZATION: Stage.AUTHORIZATION,
        ledger_admin_pb2.FEE_STAGE_CLEARING: Stage.CLEARING,
    }.get(message.stage)
    if stage is None:
        raise RequestError("a fee rule needs a stage")
    region = {
        ledger_admin_pb2.FEE_REGION_UNSPECIFIED: Region.ANY,
        ledger_admin_pb2.FEE_REGION_DOMESTIC: Region.DOMESTIC,
        ledger_admin_pb2.FEE_REGION_INTERNATIONAL: Region.INTERNATIONAL,
    }.get(message.region)
    free_period = {
        ledger_admin_pb2.PERIOD_UNSPECIFIED: "",
        ledger_admin_pb2.PERIOD_DAY: "DAY",
        ledger_admin_pb2.PERIOD_MONTH: "MONTH",
    }.get(message.free_period)
    if region is None or free_period is None:
        raise RequestError("a fee rule has an unknown region or free_period")
    max_minor = message.max_minor if message.HasField("max_minor") else None
    above_minor = message.above_minor if message.HasField("above_minor") else None
    problem = rule_problem(
        flat_minor=message.flat_minor, bps=message.bps, min_minor=message.min_minor,
        max_minor=max_minor, above_minor=above_minor, free_uses=message.free_uses,
        free_period=free_period,
    )  # fmt: skip
    if problem is not None:
        raise RequestError(problem)
    return FeeRule(
        id=str(uuid.uuid4()),
        stage=stage,
        asset=message.asset,
        flat_minor=message.flat_minor,
        bps=message.bps,
        min_minor=message.min_minor,
        max_minor=max_minor,
        above_minor=above_minor,
        free_uses=message.free_uses,
        free_period=free_period,
        on_decline=message.on_decline,
        transaction_types=frozenset(message.transaction_types),
        channels=frozenset(message.channels),
        region=region,
        mccs=frozenset(message.mccs),
        name=message.name[:200],
    )


def fee_rule_message(rule: FeeRule) -> ledger_admin_pb2.FeeRule:
    message = ledger_admin_pb2.FeeRule(
        name=rule.name,
        stage=ledger_admin_pb2.FeeStage.Value(f"FEE_STAGE_{rule.stage.value}"),
        transaction_types=sorted(rule.transaction_types),  # type: ignore[arg-type]
        channels=sorted(rule.channels),  # type: ignore[arg-type]
        region={
            Region.ANY: ledger_admin_pb2.FEE_REGION_UNSPECIFIED,
            Region.DOMESTIC: ledger_admin_pb2.FEE_REGION_DOMESTIC,
            Region.INTERNATIONAL: ledger_admin_pb2.FEE_REGION_INTERNATIONAL,
        }[rule.region],
        mccs=sorted(rule.mccs),
        asset=rule.asset,
        flat_minor=rule.flat_minor,
        bps=rule.bps,
        min_minor=rule.min_minor,
        free_uses=rule.free_uses,
        free_period=ledger_admin_pb2.Period.Value(f"PERIOD_{rule.free_period or 'UNSPECIFIED'}"),
        on_decline=rule.on_decline,
    )
    if rule.max_minor is not None:
        message.max_minor = rule.max_minor
    if rule.above_minor is not None:
        message.above_minor = rule.above_minor
    return message


def limit_of(message: ledger_admin_pb2.Limit) -> Limit:
    subject = {
        ledger_admin_pb2.LIMIT_SUBJECT_CARD: Subject.CARD,
        ledger_admin_pb2.LIMIT_SUBJECT_ACCOUNT: Subject.ACCOUNT,
    }.get(message.subject)
    period = {
        ledger_admin_pb2.PERIOD_TRANSACTION: Period.TRANSACTION,
        ledger_admin_pb2.PERIOD_DAY: Period.DAY,
        ledger_admin_pb2.PERIOD_MONTH: Period.MONTH,
    }.get(message.period)
    if subject is None or period is None:
        raise RequestError("a limit needs a subject (card or account) and a period")
    amount_max = message.amount_max_minor if message.HasField("amount_max_minor") else None
    count_max = message.count_max if message.HasField("count_max") else None
    problem = limit_problem(period, amount_max, count_max)
    if problem is not None:
        raise RequestError(problem)
    return Limit(
        id=str(uuid.uuid4()),
        subject=subject,
        period=period,
        asset=message.asset,
        amount_max_minor=amount_max,
        count_max=count_max,
        transaction_types=frozenset(message.transaction_types),
    )


def limit_message(limit: Limit) -> ledger_admin_pb2.Limit:
    message = ledger_admin_pb2.Limit(
        limit_id=limit.id,
        subject=ledger_admin_pb2.LimitSubject.Value(f"LIMIT_SUBJECT_{limit.subject.value}"),
        period=ledger_admin_pb2.Period.Value(f"PERIOD_{limit.period.value}"),
        transaction_types=sorted(limit.transaction_types),  # type: ignore[arg-type]
        asset=limit.asset,
    )
    if limit.amount_max_minor is not None:
        message.amount_max_minor = limit.amount_max_minor
    if limit.count_max is not None:
        message.count_max = limit.count_max
    return message
