"""Work a run will need later, started early in a background thread.

A night with new tracks pays, once, for what a night without them never
needs; the largest part is Great Expectations' import (about 4 s here) before
the metadata suite. Started as soon as the scrape finds new albums, it runs
while the run waits on the network for their tracks instead of after. A
night that finds nothing new starts nothing: a background import beside a
short run only competes with it for the interpreter (an empty night took
about 3 s longer when the import always started).

A warm-up changes no result: the stage that needs the thing makes the same
call itself and waits for a warm-up still under way (the import lock, or the
lock of the cached maker) instead of doing the work twice.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

logger = logging.getLogger(__name__)

_started: dict[str, threading.Thread] = {}
_lock = threading.Lock()


def start(name: str, work: Callable[[], object]) -> bool:
    """Run ``work`` in a daemon thread, once per process per ``name``; True
    when this call started it. A failure is logged at debug level and
    otherwise ignored: the stage that needs the work does it again and
    reports its own error."""
    with _lock:
        if name in _started:
            return False
        thread = _started[name] = threading.Thread(target=_run, args=(name, work), name=f"warm-up {name}",
                                                   daemon=True)
    thread.start()
    return True


def wait(name: str, timeout_s: float | None = None) -> None:
    """Until the warm-up ``name`` has finished (at once if none was started)."""
    with _lock:
        thread = _started.get(name)
    if thread is not None:
        thread.join(timeout_s)


def _run(name: str, work: Callable[[], object]) -> None:
    try:
        work()
    except Exception:  # noqa: BLE001 - the stage that needs it raises its own error
        logger.debug("warm-up %s failed; the stage that needs it does the work itself", name, exc_info=True)
