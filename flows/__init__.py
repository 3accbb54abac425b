"""Sonufy's Prefect flows (build, nightly refresh, retrain, train) and the command line.

A process that runs a flow holds a few million Python objects by its end
(torch, Great Expectations, Prefect, pandas), and the interpreter's last
garbage collection at exit walks all of them: 1.7 to 2.0 s of every busy
nightly's 10 to 15 s on 2 cores, after its work is done. Frozen at exit,
they are left to the operating system: the same night's exit took 0.26 to
0.31 s (docs/performance.md). The freeze is registered on the flows' first
import, so the exit handlers registered after it (Prefect's drains among
them) run before it; any handler still runs, since freezing only keeps
objects out of garbage collections. Connections and files are closed where
they are used, not left to the collector.
"""

import atexit
import gc

atexit.register(gc.freeze)
