"""Serve every deployment of ../prefect.yaml from this one process.

The other way to run them, without a work pool or a worker: this process
polls the Prefect API (PREFECT_API_URL, e.g. a `prefect server start` on
127.0.0.1), runs each scheduled or triggered run as a subprocess, and pauses
the schedules when it stops (SIGTERM or Ctrl-C). Deployments, entrypoints,
parameters, schedules and concurrency limits come from prefect.yaml, so
both ways run the same thing.

    .venv/bin/python deployments/serve.py [--timezone Europe/Paris] [--db PATH] [--only NAME ...]

--timezone (default: $SONUFY_TIMEZONE, else UTC) is the schedules' time zone;
--db points every deployment at another DuckDB file.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
os.environ.setdefault("DO_NOT_TRACK", "1")
os.environ.setdefault("GX_ANALYTICS_ENABLED", "False")
os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "sonufy_model")


def runner_deployments(timezone: str, db: str | None = None, only: list[str] | None = None) -> list:
    """RunnerDeployments of prefect.yaml's deployments, for ``prefect.serve``."""
    from prefect.client.schemas.objects import ConcurrencyLimitConfig
    from prefect.flows import load_flow_from_entrypoint
    from prefect.schedules import Cron

    config = yaml.safe_load((ROOT / "prefect.yaml").read_text())
    specs = [spec for spec in config["deployments"] if not only or spec["name"] in only]
    unknown = sorted(set(only or ()) - {spec["name"] for spec in specs})
    if unknown:
        raise SystemExit(f"--only {', '.join(unknown)}: not in prefect.yaml")
    deployments = []
    for spec in specs:
        flow = load_flow_from_entrypoint(str(ROOT / spec["entrypoint"]))
        parameters = dict(spec.get("parameters") or {})
        if db is not None:
            parameters["db"] = str(Path(db).resolve())
        limit = spec.get("concurrency_limit")
        deployments.append(flow.to_deployment(
            name=spec["name"],
            description=spec.get("description"),
            parameters=parameters,
            schedules=[Cron(s["cron"], timezone=timezone) for s in spec.get("schedules") or []],
            concurrency_limit=ConcurrencyLimitConfig(**limit) if limit else None,
        ))
    return deployments


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Serve Sonufy's deployments (prefect.yaml) from one process.")
    parser.add_argument("--timezone", default=os.environ.get("SONUFY_TIMEZONE") or "UTC",
                        help="IANA time zone of the schedules (default: $SONUFY_TIMEZONE, else UTC)")
    parser.add_argument("--db", help="the DuckDB file of every deployment (default: prefect.yaml's)")
    parser.add_argument("--only", nargs="+", metavar="NAME", help="serve only these deployments")
    args = parser.parse_args(argv)
    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    from prefect import serve

    serve(*runner_deployments(args.timezone, args.db, args.only))


if __name__ == "__main__":
    main()
