"""Do neighbours in the latent space sound alike? Precision@k against chance.

Reads a DuckDB file built from the demo catalog (``make demo``), where each
track's style is the genre query that found it, and scores the current
model's latent space, with random vectors on the same tracks as a baseline.

    .venv/bin/python bench/quality.py --db sonufy.duckdb

Last line: one JSON object with the figures.
"""

from __future__ import annotations

import argparse
import json
import re
import sys

import duckdb
import numpy as np

from sonufy_model.evaluate import precision_at_k

_GENRE = re.compile(r'genre:"([^"]+)"')


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="sonufy.duckdb")
    parser.add_argument("-k", type=int, default=10)
    args = parser.parse_args(argv)

    con = duckdb.connect(args.db, read_only=True)
    rows = con.execute(
        "SELECT l.track_id, l.artist, t.found_by, l.vector, l.model_version "
        "FROM latent AS l JOIN tracks AS t USING (track_id) ORDER BY l.track_id"
    ).fetchall()
    con.close()
    styled = [(artist, _GENRE.search(found_by or ""), vector) for _, artist, found_by, vector, _ in rows]
    styled = [(artist, match.group(1), vector) for artist, match, vector in styled if match]
    if len(styled) <= args.k:
        print(f"{args.db}: only {len(styled)} tracks with a demo style; run `make demo` first", file=sys.stderr)
        return 2
    artists = [artist for artist, _, _ in styled]
    styles = [style for _, style, _ in styled]
    vectors = np.array([vector for _, _, vector in styled], dtype=np.float32)
    random_vectors = np.random.default_rng(0).standard_normal(vectors.shape)

    figures = {"bench": "quality", "db": args.db, "model_version": rows[0][4], "tracks": len(styled), "k": args.k}
    for name, space in (("latent", vectors), ("random", random_vectors)):
        style = precision_at_k(space, styles, args.k)
        style_other_artists = precision_at_k(space, styles, args.k, exclude_groups=artists)
        artist = precision_at_k(space, artists, args.k)
        figures[f"{name}_style_p{args.k}"] = round(style["precision"], 4)
        figures[f"{name}_style_other_artists_p{args.k}"] = round(style_other_artists["precision"], 4)
        figures[f"{name}_artist_p{args.k}"] = round(artist["precision"], 4)
        figures["style_chance"] = round(style["chance"], 4)
        figures["style_other_artists_chance"] = round(style_other_artists["chance"], 4)
        figures["artist_chance"] = round(artist["chance"], 4)
    figures["style_ratio_vs_chance"] = round(figures[f"latent_style_p{args.k}"] / figures["style_chance"], 2)

    print(f"{len(styled)} tracks, model {figures['model_version']}, precision@{args.k}:")
    print(f"{'label':<32}{'latent':>8}{'random':>8}{'chance':>8}")
    for label, key, chance in (
        ("same style", "style", "style_chance"),
        ("same style, other artists only", "style_other_artists", "style_other_artists_chance"),
        ("same artist", "artist", "artist_chance"),
    ):
        print(f"{label:<32}{figures[f'latent_{key}_p{args.k}']:>8.3f}{figures[f'random_{key}_p{args.k}']:>8.3f}{figures[chance]:>8.3f}")
    print(json.dumps(figures))
    return 0


if __name__ == "__main__":
    sys.exit(main())
