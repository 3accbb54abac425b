"""The saved lists' task: every saved radio made again after the nightly's
encoding, its file and Spotify playlist replaced, and what changed published
as a markdown artifact (``<flow>-saved-lists``)."""

from __future__ import annotations

from dataclasses import asdict

from prefect import get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from sonufy_model import saved_lists
from sonufy_model.config import ServiceSettings
from sonufy_model.store import Store

#: Tracks named per list and direction in the artifact; the rest are counted.
MAX_NAMED = 50


@task(cache_policy=NO_CACHE, task_run_name="saved-lists[{flow_name}]")
def refresh_saved_lists(store: Store, flow_name: str) -> list[dict]:
    """Each saved list made again and delivered; what each gained and lost
    (a list's problem is reported, never raised). The Spotify settings come
    from the environment, read when a list goes to Spotify: the login stays
    in its token file, out of the flow's parameters and logs."""
    logger = get_run_logger()
    refreshed = saved_lists.refresh_all(store, spotify_settings=ServiceSettings.from_env)
    for one in refreshed:
        if one.problem:
            logger.warning("saved list %r: %s", one.name, one.problem)
        else:
            logger.info("saved list %r: %d tracks, %d added, %d removed", one.name, one.tracks,
                        len(one.added), len(one.removed))
    if refreshed:
        create_markdown_artifact(key=f"{flow_name}-saved-lists", markdown=_report(refreshed),
                                 description="the saved lists made again: what each gained and lost")
    return [asdict(one) for one in refreshed]


def _report(refreshed: list[saved_lists.Refreshed]) -> str:
    problems = sum(1 for one in refreshed if one.problem)
    lines = [f"# Saved lists: {len(refreshed)} made again" + (f", {problems} with a problem" if problems else ""),
             "", "| list | tracks | added | removed | delivered | problem |", "|---|---|---|---|---|---|"]
    for one in refreshed:
        lines.append(f"| {_cell(one.name)} | {one.tracks} | {len(one.added)} | {len(one.removed)} | "
                     f"{_cell('; '.join(one.delivered))} | {_cell(one.problem or '')} |")
    for one in refreshed:
        for what, names in (("added", one.added), ("removed", one.removed)):
            if names:
                shown = ", ".join(_cell(name) for name in names[:MAX_NAMED])
                more = f" and {len(names) - MAX_NAMED} more" if len(names) > MAX_NAMED else ""
                lines += ["", f"**{_cell(one.name)}**, {what}: {shown}{more}"]
    return "\n".join(lines)


def _cell(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")
