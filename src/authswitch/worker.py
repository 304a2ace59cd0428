"""One worker process of ``authswitch serve`` (started by :mod:`authswitch.supervisor`).

A worker is a whole server on the shared gRPC port (SO_REUSEPORT): its own event loop,
group committer, outbox worker and connections. It learns from its environment which worker
it is (``AUTHSWITCH_WORKER_INDEX``: worker 0 also runs the periodic jobs) and where to say
it is ready (``AUTHSWITCH_WORKER_READY_FD``). It dies with its supervisor: a supervisor
killed outright must not leave workers serving on.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import gc
import logging
import os
import signal
import sys

__all__ = ["main"]

log = logging.getLogger("authswitch")

_PR_SET_PDEATHSIG = 1  # prctl(2)

# Read by this module, not settings: the supervisor sets them for its workers only.
INDEX_ENV = "AUTHSWITCH_WORKER_INDEX"
READY_FD_ENV = "AUTHSWITCH_WORKER_READY_FD"
SUPERVISOR_ENV = "AUTHSWITCH_WORKER_SUPERVISOR_PID"
COUNT_ENV = "AUTHSWITCH_WORKER_COUNT"


def _die_with_supervisor(supervisor_pid: int) -> None:
    """Be sent SIGKILL when the supervisor dies (Linux); if it already has, exit."""
    name = ctypes.util.find_library("c")
    if name:
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL(name, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != supervisor_pid:
        sys.exit(1)


# Young objects collected once this many more have been allocated than freed (Python's
# default: 700). A decision allocates a few hundred objects and frees nearly all of them by
# reference counting; with 64 or more in flight, the default runs a collection every few
# decisions, each traversing everything still in flight (measured: 4-5% of a worker's CPU).
GC_YOUNG_THRESHOLD = 20_000


def _tune_gc() -> None:
    """Once the worker has loaded everything it keeps (catalogue, compiled statements,
    protobuf descriptors), move those objects out of the collector's sight (``gc.freeze``):
    the cyclic collector then only traverses what decisions allocate, and less often."""
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(GC_YOUNG_THRESHOLD, older, oldest)


def main() -> int:
    index = int(os.environ[INDEX_ENV])
    workers = int(os.environ[COUNT_ENV])
    ready_fd = int(os.environ[READY_FD_ENV])
    _die_with_supervisor(int(os.environ[SUPERVISOR_ENV]))

    import uvloop

    from authswitch.config import Settings
    from authswitch.logs import configure_logging

    settings = Settings.from_env()
    configure_logging(settings.log_level, settings.log_format)

    async def serve() -> int:
        from authswitch.app import Application

        # Alone, a worker listens early and reports NOT_SERVING until ready (a readiness
        # probe's view); among several, it opens its share of the port only once ready.
        app = Application(settings, run_jobs=index == 0, listen_early=workers == 1)
        try:
            await app.start()
            _tune_gc()
            os.write(ready_fd, b"ready\n")
            os.close(ready_fd)
            await app.run_until_signalled()
        finally:
            if app.state.value != "stopped":
                await app.stop()
        return 0

    try:
        return uvloop.run(serve())
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
