"""bench/redraw.py: its synthetic store holds what the renderer draws, and
the bench ends with its JSON line."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

from sonufy_model import landscape as ls
from sonufy_model.landscape.persistence import _query
from sonufy_model.store import Store


def _bench():
    spec = importlib.util.spec_from_file_location("redraw_bench", Path(__file__).parents[1] / "bench" / "redraw.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    return bench


def test_redraw_store_has_points_group_maps_and_previews(tmp_path):
    store = Store(_bench().make_store(tmp_path / "store", 300))
    counts = _query(store, "landscape_counts").row(0, named=True)
    assert counts == {"fitted": 297, "placed": 3, "pending": 0}
    assert set(ls.landscape_fits(store)["level"]) == {"tracks", "artist", "genre"}
    points = ls.landscape_points(store)
    assert points.height == 300 and points["audio"].null_count() == 0  # every preview file is there
    result = ls.render(store, tmp_path / "out")
    page = Path(result["html"]).read_text(encoding="utf-8")
    assert result["tracks"] == 300 and '"artists":{' in page and '"genres":{' in page  # both group maps drawn


def test_redraw_bench_ends_with_json(tmp_path, capsys):
    result = _bench().main(["--tracks", "200", "500", "--no-warm-up", "--workdir", str(tmp_path)])
    last = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert last == result and last["bench"] == "redraw" and last["tracks"] == [200, 500]
    for key in ("total_s", "read_s", "png_s", "page_s", "png_mb", "page_mb"):
        assert set(last[key]) == {"200", "500"} and all(v > 0 for v in last[key].values()), key
    assert isinstance(last["exponent"], float)
