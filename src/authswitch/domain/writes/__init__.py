"""Whole ledger writes, one pure function per event (issue 19, item 1).

Each module here builds the :class:`~authswitch.domain.records.LedgerWrite` of one area's
events — the decision record, the holds, releases and tombstones, the balance changes and
journal entries (made only through :mod:`authswitch.domain.postings`), the notifications,
client calls, usage and card updates — from the event's facts. No I/O and no clock: ids,
times and the response bytes are arguments, so a service only gathers facts, runs the
cache step and hands the result to the committer.
"""
