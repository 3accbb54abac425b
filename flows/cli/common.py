"""What the command groups share: the --db option, the number types, the
error a command reports with exit code 2, the store opened read-only, and the
tables of tracks."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

DEFAULT_DB = "sonufy.duckdb"


class CommandError(Exception):
    """A bad input on the command line; the message names it."""


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be at least 1")
    return value


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if value <= 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be positive")
    return value


def paste_redirect(url: str) -> str:
    """The Spotify login's one interactive step: the address to approve Sonufy
    at (on stderr, alone on its line), and the address the browser was sent
    back to, read from stdin (pasted, or written by a script that drives it)."""
    print("Log in to Spotify: open this address, approve Sonufy, then paste here the address your "
          "browser is sent to (its page may not load: copy the address all the same):", file=sys.stderr)
    print(url, file=sys.stderr, flush=True)
    answer = sys.stdin.readline().strip()
    if not answer:
        raise CommandError("no address pasted: the Spotify login needs the address your browser was sent "
                           "back to (run `sonufy playlist login` in a terminal)")
    return answer


def add_db(sub: argparse.ArgumentParser) -> None:
    sub.add_argument("--db", default=DEFAULT_DB, help=f"the DuckDB file (default: ./{DEFAULT_DB})")


def open_store(db: str):
    from sonufy_model.store import Store

    if not Path(db).is_file():
        raise CommandError(f"--db {db}: no such file; run `sonufy build` first")
    return Store(db, reader=True)  # read-only: never migrates, never waits for the writer lock


def half_names(store) -> tuple[str, str]:
    """What the two half-similarities of the current model compare: its
    encoder's time and frequency branches, or, for a model fusing texture
    patterns (sonufy_model.fusion), the encoder and the texture."""
    model = store.current_model()
    return ("encoder", "texture") if model is not None and model.texture != "none" else ("time", "frequency")


def print_recommendations(rows: list[dict], seed: str, as_json: bool, extra: dict | None = None,
                          halves: tuple[str, str] = ("time", "frequency")) -> None:
    if as_json:
        print(json.dumps({"seed": seed, **(extra or {}), "recommendations": rows}, indent=2, default=str))
        return
    seed_style = rows[0].get("seed_style") if rows else None
    print_tracks(rows, f"Sounds like: {seed}" + (f" ({seed_style})" if seed_style else ""), halves=halves)


def print_tracks(rows: list[dict], title: str, first: str = "rank", notes: tuple[str, ...] = (),
                 halves: tuple[str, str] = ("time", "frequency")) -> None:
    """A table of tracks: rank (or step), artist, style when rows have one (the
    demo's), title, the three scores (cosine, then the two halves' named
    ``halves``: :func:`half_names`), the mutual proximity when ranked by it,
    the seed when rows come from several, the preview link."""
    from rich.console import Console
    from rich.table import Table

    styled = any(row.get("style") for row in rows)
    columns = [first, "artist", *(["style"] if styled else []), "title", "cosine", *halves]
    columns += ["mp"] if rows and rows[0].get("mutual_proximity") is not None else []
    seeds = {seed: number for number, seed in enumerate(dict.fromkeys(r["seed"] for r in rows if "seed" in r), 1)}
    # A column of 1s would only take room: one seed is named below, or in the title.
    columns += ["seed"] if len(seeds) > 1 else []
    columns += ["preview"]
    table = Table(title=title)
    for column in columns:
        table.add_column(column, justify="right" if column in (first, "cosine", *halves, "mp", "seed")
                         else "left")
    for rank, row in enumerate(rows, start=1):
        cells = [str(row.get("step", rank - 1) if first == "step" else rank), row["artist"],
                 *([row.get("style") or ""] if styled else []), row["title"],
                 f"{row['cosine']:.3f}", f"{row['time_similarity']:.3f}", f"{row['frequency_similarity']:.3f}"]
        cells += [f"{row['mutual_proximity']:.3f}"] if "mp" in columns else []
        cells += [str(seeds[row["seed"]])] if "seed" in columns else []
        cells.append(row.get("preview_url") or "")
        table.add_row(*cells)
    console = Console()
    if not console.is_terminal:  # a pipe or a file: whole titles and links, not a terminal's 80 columns
        console = Console(width=200)
    console.print(table)
    for seed, number in seeds.items():
        if len(seeds) > 1 or seed not in title:
            console.print(f"seed {number}: {seed}")
    for note in notes:
        console.print(note)

