"""The landscape page in a real headless browser: Debian's Chromium, driven by Playwright.

`make test` installs Chromium from Debian's packages (the Makefile's
chromium target); Playwright is pointed at it and never downloads a browser.
"""

from __future__ import annotations

import os
import shutil
import wave
from pathlib import Path

import numpy as np
import pytest

from conftest import build_space
from sonufy_model import landscape as ls
from sonufy_model import search
from sonufy_model.config import Paths
from sonufy_model.store import Store

CHROMIUM = os.environ.get("SONUFY_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"

if not Path(CHROMIUM).is_file():
    if os.environ.get("CI"):
        raise RuntimeError(f"{CHROMIUM}: no Chromium; `make test` installs it (apt-get install chromium)")
    pytest.skip("no Chromium here: `make chromium` installs Debian's", allow_module_level=True)

from playwright.sync_api import sync_playwright  # noqa: E402

PLAYABLE = 17  # the track with a preview on disk

pytestmark = pytest.mark.slow  # Chromium


def _wav(path: Path) -> Path:
    tone = (np.sin(np.arange(22_050 // 2) * 2 * np.pi * 440 / 22_050) * 8000).astype(np.int16)
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(22_050)
        out.writeframes(tone.tobytes())
    return path


@pytest.fixture(scope="module")
def page_file(tmp_path_factory):
    root = tmp_path_factory.mktemp("browser")
    preview = _wav(root / "preview.wav")
    paths = Paths.for_db(root / "s.duckdb")
    store = Store(paths.db)
    space = build_space(store, preview_urls={PLAYABLE: preview.as_uri()})
    ls.update_landscape(store, paths.models)
    result = ls.render(store, root / "out", color_by="genre")
    return Path(result["html"]), store, space, preview


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as playwright:
        chromium = playwright.chromium.launch(
            executable_path=CHROMIUM, args=["--autoplay-policy=no-user-gesture-required"]
        )
        yield chromium
        chromium.close()


@pytest.fixture
def page(browser, page_file, tmp_path):
    html, *_ = page_file
    page = browser.new_page(viewport={"width": 1280, "height": 800})
    errors: list[str] = []
    page.on("console", lambda message: errors.append(message.text) if message.type == "error" else None)
    page.on("pageerror", lambda error: errors.append(str(error)))
    page.goto(html.as_uri())
    page.wait_for_selector("body[data-ready=true]")
    yield page
    page.screenshot(path=str(tmp_path / "landscape.png"))
    page.close()
    assert errors == [], f"console errors: {errors}"


def _lit_pixels(page) -> int:
    return page.evaluate(
        """() => {
            const c = document.getElementById('map');
            const d = c.getContext('2d').getImageData(0, 0, c.width, c.height).data;
            let n = 0;
            for (let i = 0; i < d.length; i += 4)
                if (Math.abs(d[i] - 11) + Math.abs(d[i + 1] - 13) + Math.abs(d[i + 2] - 18) > 60) n++;
            return n;
        }"""
    )


def test_the_page_loads_offline_and_draws_every_point(page):
    assert page.inner_text("#count").startswith("240 of 240 tracks drawn")
    assert page.get_attribute("#map", "data-drawn") == "240"
    # each artist's 10 tracks make one tight island (min_dist 0.1): 24 blobs of dots at least
    assert _lit_pixels(page) > 24 * 80
    legend = page.inner_text("#legend")
    assert "jazz" in legend and "metal" in legend


def test_hover_names_the_artist_and_title(page, page_file):
    _, _, space, _ = page_file
    i = page.evaluate("window.landscape.indexOf('techno artist 1', 'song t055')")
    assert i == 55 and space["artists"][55] == "techno artist 1"
    x, y = page.evaluate(f"window.landscape.screenOf({i})")
    page.mouse.move(x, y)
    tooltip = page.locator("#tooltip")
    tooltip.wait_for(state="visible")
    hovered = int(tooltip.get_attribute("data-index"))
    text = tooltip.inner_text()
    assert space["artists"][hovered] in text and f"song {space['ids'][hovered]}" in text
    assert hovered == i or np.linalg.norm(
        np.subtract(page.evaluate(f"window.landscape.screenOf({hovered})"), (x, y))) < 12


def test_search_highlights_the_track_and_its_ten_nearest(page, page_file):
    _, store, _, _ = page_file
    page.fill("#search", "song t130")
    assert page.locator("#matches li").first.inner_text() == "metal artist 1 \u2014 song t130"
    page.press("#search", "Enter")
    assert page.inner_text("#selection h2") == "metal artist 1 \u2014 song t130"
    shown = page.locator("#selection li").all_inner_texts()
    expected = search.similar(store, track_id="t130", k=10)
    assert shown == [f"{a} \u2014 {t}" for a, t in zip(expected["artist"], expected["title"])]
    assert page.evaluate("window.landscape.state.highlight.length") == 11
    # the rest of the map is dimmed, the eleven drawn on top with rings
    before = _lit_pixels(page)
    page.keyboard.press("Escape")
    assert page.evaluate("window.landscape.state.highlight.length") == 0
    assert _lit_pixels(page) > before


def test_colour_by_another_label_and_other_maps(page):
    # the labels these tracks have (no file, so no folder)
    options = page.locator("#color-by option").all_inner_texts()
    assert options == ["genre", "album", "artist", "year", "source"]
    page.select_option("#color-by", "year")
    assert "Colour: year" in page.inner_text("#legend") and "1970" in page.inner_text("#legend")
    page.select_option("#layer", "artists")
    assert page.inner_text("#count").startswith("24 of 24 artists drawn")
    x, y = page.evaluate("window.landscape.screenOf(0)")
    page.mouse.move(x, y)
    page.locator("#tooltip").wait_for(state="visible")
    assert "10 tracks" in page.inner_text("#tooltip")


def test_a_click_plays_the_preview_when_there_is_one(page, page_file):
    _, _, _, preview = page_file
    x, y = page.evaluate(f"window.landscape.screenOf({PLAYABLE})")
    page.evaluate("window.landscape.select(-1)")
    # zoom in around the track so that no neighbour is nearer the pointer
    for _ in range(3):
        page.mouse.move(x, y)
        page.mouse.wheel(0, -400)
        x, y = page.evaluate(f"window.landscape.screenOf({PLAYABLE})")
    page.mouse.click(x, y)
    page.wait_for_function("() => !document.getElementById('player').paused")
    assert page.evaluate("document.getElementById('player').currentSrc") == preview.as_uri()
    assert page.inner_text("#status").startswith("Playing")
    # a neighbour, on screen beside it, has no preview
    other = page.evaluate(f"""() => {{
        const box = document.getElementById('map').getBoundingClientRect();
        return window.landscape.layer().neighbours[{PLAYABLE}].find(j => {{
            const [x, y] = window.landscape.screenOf(j);
            return x > box.left + 20 && x < box.right - 20 && y > box.top + 20 && y < box.bottom - 20;
        }});
    }}""")
    page.mouse.click(*page.evaluate(f"window.landscape.screenOf({other})"))
    assert page.evaluate("window.landscape.state.selected") == other
    assert page.inner_text("#status").startswith("No preview for")
