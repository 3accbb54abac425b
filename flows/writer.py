"""One writer per store: the writing flows that wait for it (build, train).

The nightly and the retrain take the store's writer lock themselves and exit
cleanly when another writer holds it (a missed night is caught up by the
next); a build or a training run waits for it, saying who holds it, up to
``SONUFY_DB_LOCK_WAIT_S``, then fails naming the holder.
"""

from __future__ import annotations

import functools
import inspect

from sonufy_model.config import Paths
from sonufy_model.store import DatabaseLocked, Store


def holds_writer_lock(purpose: str):
    """Decorate a flow function whose parameters include ``db`` (and maybe
    ``data_dir``): it runs holding that store's writer lock, and publishes
    the store for readers at its end (see Store.publish)."""

    def decorate(fn):
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            store = Store(Paths.for_db(bound.arguments["db"], bound.arguments.get("data_dir")).db)
            with store.writer(purpose, store.lock_wait_s, publish=True) as busy:
                if busy:
                    raise DatabaseLocked(f"{purpose}: {busy} for more than {store.lock_wait_s:g} s "
                                         "(SONUFY_DB_LOCK_WAIT_S); nothing was written")
                return fn(*args, **kwargs)

        # The flow's signature with its parameter types resolved where the
        # flow is defined: Prefect validates a run's parameters against it, and
        # would otherwise look the type names up in this module.
        wrapper.__signature__ = inspect.signature(fn, eval_str=True)
        return wrapper

    return decorate
