"""The stand-in services, exercised over real HTTP on loopback with the real clients (spotipy, requests)."""

from __future__ import annotations

import asyncio
import concurrent.futures
import datetime
import io
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import pytest
import requests
import soundfile
import spotipy
from spotipy.cache_handler import MemoryCacheHandler
from spotipy.oauth2 import SpotifyClientCredentials

from sonufy_demo import standin
from sonufy_demo.standin import Faults, StandIn, StandInConfig
from sonufy_demo.synth import STYLES, is_new_release
from sonufy_model import catalog

TODAY = datetime.date(2026, 3, 15)
CLIENT_ID, CLIENT_SECRET = "sonufy-demo", "sonufy-demo-secret"
REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server():
    with StandIn(StandInConfig(n_tracks=60, today=TODAY)) as running:
        yield running


@pytest.fixture
def make_server():
    """Start extra stand-ins with their own configuration; all are stopped after the test."""
    started = []

    def make(**config) -> StandIn:
        config.setdefault("n_tracks", 20)
        started.append(StandIn(StandInConfig(today=TODAY, **config)).start())
        return started[-1]

    yield make
    for running in started:
        running.stop()


def spotify_client(server: StandIn) -> spotipy.Spotify:
    """spotipy pointed at the stand-in, with a plain ``requests.Session`` as
    sonufy_model.catalog.spotify_client sets it up (see
    ``test_our_spotify_client_reports_the_services_own_status_and_retry_after``).
    """
    auth = SpotifyClientCredentials(
        client_id=CLIENT_ID, client_secret=CLIENT_SECRET, cache_handler=MemoryCacheHandler()
    )
    auth.OAUTH_TOKEN_URL = f"{server.spotify_accounts_base}/api/token"
    client = spotipy.Spotify(
        auth_manager=auth,
        retries=0,
        status_retries=0,
        requests_session=requests.Session(),
    )
    client.prefix = f"{server.spotify_api_base}/v1/"
    return client


def bearer(server: StandIn) -> dict[str, str]:
    token = requests.post(
        f"{server.spotify_accounts_base}/api/token",
        data={"grant_type": "client_credentials"},
        auth=(CLIENT_ID, CLIENT_SECRET),
        timeout=5,
    ).json()["access_token"]
    return {"Authorization": f"Bearer {token}"}


# --------------------------------------------------------------------------- accounts and auth


def test_token_flow(server):
    url = f"{server.spotify_accounts_base}/api/token"
    response = requests.post(url, data={"grant_type": "client_credentials"}, auth=(CLIENT_ID, CLIENT_SECRET))
    assert response.status_code == 200
    body = response.json()
    assert body["token_type"] == "Bearer" and body["expires_in"] == 3600 and body["access_token"]

    in_form = requests.post(
        url, data={"grant_type": "client_credentials", "client_id": CLIENT_ID, "client_secret": CLIENT_SECRET}
    )
    assert in_form.status_code == 200 and in_form.json()["access_token"] != body["access_token"]

    wrong = requests.post(url, data={"grant_type": "client_credentials"}, auth=(CLIENT_ID, "nope"))
    assert wrong.status_code == 400
    assert wrong.json() == {"error": "invalid_client", "error_description": "Invalid client"}

    no_grant = requests.post(url, auth=(CLIENT_ID, CLIENT_SECRET))
    assert no_grant.status_code == 400 and no_grant.json()["error"] == "unsupported_grant_type"


def test_api_requires_a_valid_bearer_token(server):
    url = f"{server.spotify_api_base}/v1/search?q=a&type=track"
    missing = requests.get(url)
    assert (missing.status_code, missing.json()) == (401, {"error": {"status": 401, "message": "No token provided"}})
    unknown = requests.get(url, headers={"Authorization": "Bearer not-a-token"})
    assert unknown.status_code == 401 and unknown.json()["error"]["message"] == "Invalid access token"
    unknown_path = requests.get(f"{server.spotify_api_base}/v1/no-such-thing", headers=bearer(server))
    assert unknown_path.status_code == 404


def test_spotipy_refreshes_short_lived_tokens_and_expired_ones_are_refused(make_server):
    server = make_server(token_ttl_s=1)
    client = spotify_client(server)
    for _ in range(3):
        assert client.search("year:1900-2100", limit=1)["tracks"]["total"] == 20
    assert server.stats["tokens issued"] == 3, "spotipy refreshes any token within 60 s of expiry"

    headers = bearer(server)
    time.sleep(1.1)
    expired = requests.get(f"{server.spotify_api_base}/v1/search?q=a&type=track", headers=headers)
    assert expired.status_code == 401
    assert expired.json()["error"]["message"] == "The access token expired"


# --------------------------------------------------------------------------- the listener's account (PKCE)

REDIRECT = "http://127.0.0.1:8888/callback"


def _pkce_pair() -> tuple[str, str]:
    import base64
    import hashlib
    import secrets

    verifier = secrets.token_urlsafe(48)
    challenge = base64.urlsafe_b64encode(hashlib.sha256(verifier.encode()).digest()).decode().rstrip("=")
    return verifier, challenge


def _code(server: StandIn, challenge: str, **params: str) -> requests.Response:
    query = {"client_id": CLIENT_ID, "response_type": "code", "redirect_uri": REDIRECT, "state": "s1",
             "code_challenge_method": "S256", "code_challenge": challenge, "scope": "playlist-modify-private",
             **params}
    return requests.get(f"{server.spotify_accounts_base}/authorize", params=query, allow_redirects=False,
                        timeout=5)


def _exchange(server: StandIn, code: str, verifier: str) -> requests.Response:
    return requests.post(f"{server.spotify_accounts_base}/api/token", timeout=5, data={
        "grant_type": "authorization_code", "client_id": CLIENT_ID, "code": code, "redirect_uri": REDIRECT,
        "code_verifier": verifier})


def _listener_token(server: StandIn) -> dict:
    verifier, challenge = _pkce_pair()
    code = parse_qs(urlsplit(_code(server, challenge).headers["Location"]).query)["code"][0]
    return _exchange(server, code, verifier).json()


def test_authorize_redirects_with_a_code_checked_against_its_challenge_once(server):
    verifier, challenge = _pkce_pair()
    answer = _code(server, challenge)
    assert answer.status_code == 302
    back = urlsplit(answer.headers["Location"])
    assert f"{back.scheme}://{back.netloc}{back.path}" == REDIRECT
    query = parse_qs(back.query)
    assert query["state"] == ["s1"]
    code = query["code"][0]
    wrong = _exchange(server, code, _pkce_pair()[0])
    assert (wrong.status_code, wrong.json()["error"]) == (400, "invalid_grant")
    assert wrong.json()["error_description"] == "code_verifier was incorrect"
    again = _exchange(server, code, verifier)  # a code is good for one try, even a failed one
    assert again.json()["error_description"] == "Invalid authorization code"

    token = _listener_token(server)
    assert token["expires_in"] == 3600 and token["scope"] == "playlist-modify-private"
    refreshed = requests.post(f"{server.spotify_accounts_base}/api/token", timeout=5, data={
        "grant_type": "refresh_token", "client_id": CLIENT_ID, "refresh_token": token["refresh_token"]}).json()
    assert refreshed["access_token"] != token["access_token"]
    reused = requests.post(f"{server.spotify_accounts_base}/api/token", timeout=5, data={
        "grant_type": "refresh_token", "client_id": CLIENT_ID, "refresh_token": token["refresh_token"]})
    assert reused.json()["error"] == "invalid_grant"  # rotated: the old refresh token is spent


def test_authorize_refuses_an_unregistered_redirect_and_reports_a_refusal(server, make_server):
    unregistered = _code(server, "c", redirect_uri="http://127.0.0.1:9999/elsewhere")
    assert unregistered.status_code == 400 and "Invalid redirect URI" in unregistered.text
    plain = _code(server, "c", code_challenge_method="plain")
    assert parse_qs(urlsplit(plain.headers["Location"]).query)["error"] == ["invalid_request"]
    denied = _code(make_server(authorize_denies=True), "c")
    assert parse_qs(urlsplit(denied.headers["Location"]).query) == {"error": ["access_denied"], "state": ["s1"]}


def test_the_listeners_endpoints_need_the_listeners_token_and_keep_2026s_limits(make_server):
    server = make_server(n_tracks=120)
    app = bearer(server)
    assert requests.get(f"{server.spotify_api_base}/v1/me", headers=app, timeout=5).status_code == 401
    user = {"Authorization": f"Bearer {_listener_token(server)['access_token']}"}
    me = requests.get(f"{server.spotify_api_base}/v1/me", headers=user, timeout=5).json()
    assert me["id"] == server.config.user_id
    made = requests.post(f"{server.spotify_api_base}/v1/me/playlists", headers=user, timeout=5,
                         json={"name": "Mix", "public": False, "description": "d"})
    assert made.status_code == 201 and made.json()["owner"]["id"] == me["id"] and made.json()["public"] is False
    items = f"{server.spotify_api_base}/v1/playlists/{made.json()['id']}/items"
    uris = [f"spotify:track:{track.track_id}" for track in server.catalog]
    too_many = requests.post(items, headers=user, json={"uris": uris[:101]}, timeout=5)
    assert too_many.status_code == 400 and "maximum of 100" in too_many.json()["error"]["message"]
    assert requests.post(items, headers=user, json={"uris": uris[:100]}, timeout=5).status_code == 201
    assert requests.post(items, headers=user, json=uris[100:110], timeout=5).status_code == 201  # spotipy's body
    assert requests.put(items, headers=user, json={"uris": uris[5:8]}, timeout=5).status_code == 200
    read = requests.get(items, headers=user, timeout=5).json()
    assert [entry["item"]["id"] for entry in read["items"]] == [track.track_id for track in server.catalog[5:8]]
    assert requests.get(items, headers=app, timeout=5).status_code == 404  # private: the app's token sees nothing
    assert requests.post(items, headers=app, json={"uris": uris[:1]}, timeout=5).status_code == 401
    mine = requests.get(f"{server.spotify_api_base}/v1/me/playlists", headers=user, timeout=5).json()
    assert [p["name"] for p in mine["items"]][:1] == ["Mix"] and mine["items"][0]["items"]["total"] == 3
    removed = requests.post(f"{server.spotify_api_base}/v1/users/{me['id']}/playlists", headers=user,
                            json={"name": "old way"}, timeout=5)
    assert removed.status_code == 403  # February 2026: POST /me/playlists instead


# --------------------------------------------------------------------------- search


def test_search_pages_follow_next_to_exhaustion(server):
    client = spotify_client(server)
    page = client.search("year:1900-2100", limit=10, type="track")["tracks"]
    assert page["total"] == 60 and page["previous"] is None and page["href"].startswith(server.base_url)
    seen = []
    while page is not None:
        assert len(page["items"]) <= 10
        seen.extend(item["id"] for item in page["items"])
        next_url = page["next"]
        page = client.next({"next": next_url})["tracks"] if next_url else None
    assert sorted(seen) == sorted(track.track_id for track in server.catalog)
    popularity = {track.track_id: track.popularity for track in server.catalog}
    in_order = [popularity[track_id] for track_id in seen]
    assert in_order == sorted(in_order, reverse=True), "stable order: most popular first"


@pytest.mark.parametrize("style", [STYLES[1], STYLES[3], STYLES[-1]])
def test_genre_filter_finds_exactly_the_style(server, style):
    client = spotify_client(server)
    expected = {track.track_id for track in server.catalog if track.style == style}
    found, page = [], client.search(f'genre:"{style}"', limit=10)["tracks"]
    while True:
        found.extend(item["id"] for item in page["items"])
        if not page["next"]:
            break
        page = client.next(page)["tracks"]
    assert page["total"] == len(expected) and set(found) == expected


def test_genre_queries_split_a_large_style_by_year_under_the_cap(server):
    """A style with more searchable tracks than the cap gets year ranges, each
    under the cap, together finding every track of the style (re-releases
    included) and nothing else; a style under the cap keeps one query."""
    cap = 4
    client = spotify_client(server)
    queries = server.genre_queries(cap=cap)
    assert server.genre_queries() == [f'genre:"{style}"' for style in STYLES], "a small catalog: one query per style"
    searchable = [*server.catalog, *server.compilations]
    found_by_style: dict[str, set[str]] = {}
    for query in queries:
        style = query.split('"')[1]
        page = client.search(query, limit=10)["tracks"]
        assert 0 < page["total"] <= cap, query
        found_by_style.setdefault(style, set()).update(item["id"] for item in page["items"])
    assert any(" year:" in query for query in queries)
    for style in STYLES:
        assert found_by_style[style] == {t.track_id for t in searchable if t.style == style}, style


def test_field_filters(server):
    client = spotify_client(server)
    track = server.catalog[7]
    by_isrc = client.search(f"isrc:{track.isrc}")["tracks"]
    assert [item["id"] for item in by_isrc["items"]] == [track.track_id]
    both = client.search(f'artist:"{track.artist}" track:"{track.title}"', limit=10)["tracks"]["items"]
    assert track.track_id in {item["id"] for item in both}
    year = int(track.release_date[:4])
    in_year = client.search(f"year:{year - 1}-{year + 1}", limit=10)["tracks"]["total"]
    assert in_year == sum(1 for t in server.catalog if year - 1 <= int(t.release_date[:4]) <= year + 1)
    assert client.search("zzzzqqq")["tracks"]["total"] == 0


def test_search_limits(server):
    client = spotify_client(server)
    assert client.search("year:1900-2100")["tracks"]["limit"] == 10, "spotipy's default limit is 10"
    default = requests.get(
        f"{server.spotify_api_base}/v1/search", params={"q": "year:1900-2100", "type": "track"}, headers=bearer(server)
    )
    assert default.json()["tracks"]["limit"] == 5 and len(default.json()["tracks"]["items"]) == 5
    with pytest.raises(spotipy.SpotifyException) as too_many:
        client.search("year:1900-2100", limit=11)
    assert too_many.value.http_status == 400 and "Invalid limit" in too_many.value.msg
    with pytest.raises(spotipy.SpotifyException) as too_far:
        client.search("year:1900-2100", limit=10, offset=1001)
    assert too_far.value.http_status == 400 and "Invalid offset" in too_far.value.msg


def test_next_stops_at_the_offset_cap(make_server):
    server = make_server(n_tracks=1100)
    client = spotify_client(server)
    before_cap = client.search("year:1900-2100", limit=10, offset=990)["tracks"]
    assert before_cap["total"] == 1100
    assert parse_qs(urlsplit(before_cap["next"]).query)["offset"] == ["1000"]
    at_cap = client.next(before_cap)["tracks"]
    assert at_cap["offset"] == 1000 and len(at_cap["items"]) == 10 and at_cap["next"] is None


def test_tag_new_finds_recent_albums(server):
    client = spotify_client(server)
    expected_albums = {t.album_id for t in server.catalog if is_new_release(t.release_date, TODAY)}
    assert expected_albums
    albums = client.search("tag:new", type="album", limit=10)["albums"]
    assert {item["id"] for item in albums["items"]} == expected_albums
    assert all(item["album_type"] == "album" and item["total_tracks"] >= 1 for item in albums["items"])
    tracks = client.search("tag:new", type="track", limit=10)["tracks"]["items"]
    assert tracks and {item["album"]["id"] for item in tracks} <= expected_albums


# --------------------------------------------------------------------------- tracks and albums


def test_track_object(server):
    client = spotify_client(server)
    track = server.catalog[11]
    body = client.track(track.track_id)
    assert body["id"] == track.track_id and body["uri"] == f"spotify:track:{track.track_id}"
    assert body["external_ids"] == {"isrc": track.isrc}
    assert body["external_urls"]["spotify"] == f"https://open.spotify.com/track/{track.track_id}"
    assert body["preview_url"] is None, "null by default, as for new apps since 2024"
    assert body["album"]["id"] == track.album_id and body["album"]["release_date"] == track.release_date
    assert body["artists"][0] == {
        "external_urls": {"spotify": f"https://open.spotify.com/artist/{track.artist_id}"},
        "href": f"{server.base_url}/v1/artists/{track.artist_id}",
        "id": track.artist_id,
        "name": track.artist,
        "type": "artist",
        "uri": f"spotify:artist:{track.artist_id}",
    }
    with pytest.raises(spotipy.SpotifyException) as unknown:
        client.track("0" * 22)
    assert unknown.value.http_status == 404
    malformed = requests.get(f"{server.spotify_api_base}/v1/tracks/abc", headers=bearer(server))
    assert malformed.status_code == 400 and malformed.json()["error"]["message"] == "Invalid base62 id"


def test_album_and_album_tracks(server):
    client = spotify_client(server)
    album_id = server.catalog[0].album_id
    expected = sorted((t for t in server.catalog if t.album_id == album_id), key=lambda t: t.track_number)
    album = client.album(album_id)
    assert album["total_tracks"] == len(expected) == album["tracks"]["total"]
    assert [item["id"] for item in album["tracks"]["items"]] == [t.track_id for t in expected]
    items = client.album_tracks(album_id, limit=1)
    assert items["limit"] == 1 and (items["next"] is None) == (len(expected) == 1)
    simplified = client.album_tracks(album_id)["items"][0]
    assert not {"album", "external_ids", "popularity"} & simplified.keys()
    assert simplified["track_number"] == 1


@pytest.mark.filterwarnings("ignore:You're using `new_release")
def test_endpoints_removed_in_2026_answer_403(server):
    client = spotify_client(server)
    with pytest.raises(spotipy.SpotifyException) as several:
        client.tracks([server.catalog[0].track_id])
    assert several.value.http_status == 403
    with pytest.raises(spotipy.SpotifyException) as new_releases:
        client.new_releases()
    assert new_releases.value.http_status == 403


def test_spotify_preview_url_when_enabled(make_server):
    server = make_server(preview_url_share=1.0)
    body = spotify_client(server).track(server.catalog[0].track_id)
    assert body["preview_url"] == f"{server.base_url}/spotify-cdn/mp3-preview/{server.catalog[0].track_id}"
    response = requests.get(body["preview_url"])
    assert response.status_code == 200 and response.headers["Content-Type"] == "audio/mpeg"


# --------------------------------------------------------------------------- faults


def test_429_carries_retry_after_but_not_the_token_endpoint(make_server):
    server = make_server(faults=Faults(rate_429=1.0, retry_after_s=7))
    with pytest.raises(spotipy.SpotifyException) as limited:
        spotify_client(server).search("year:1900-2100")
    assert limited.value.http_status == 429
    assert limited.value.headers["Retry-After"] == "7"
    assert "API rate limit exceeded" in limited.value.msg
    assert server.stats["tokens issued"] == 1 and server.stats["fault 429"] == 1


def test_our_spotify_client_reports_the_services_own_status_and_retry_after(make_server):
    """sonufy_model.catalog.spotify_client gives spotipy a plain requests.Session:
    a 5xx reaches us as itself after one request, a 429 with its Retry-After
    (spotipy's default session would retry in urllib3 and report a bare
    "Max Retries" 429 with no headers)."""
    failing = make_server(faults=Faults(rate_5xx=1.0))
    with pytest.raises(spotipy.SpotifyException) as error:
        catalog.spotify_client(failing.service_settings()).search("year:1900-2100")
    assert error.value.http_status in (502, 503) and "Max Retries" not in error.value.msg
    assert failing.stats["fault 5xx"] == 1, "no retry inside the HTTP session"

    limited = make_server(faults=Faults(rate_429=1.0, retry_after_s=7))
    with pytest.raises(spotipy.SpotifyException) as error:
        catalog.spotify_client(limited.service_settings()).search("year:1900-2100")
    assert error.value.http_status == 429 and error.value.headers["Retry-After"] == "7"
    assert limited.stats["fault 429"] == 1


class _RecordedSleeps:
    """The stand-in's ``asyncio``, recording the delays it sleeps."""

    def __init__(self) -> None:
        self.delays: list[float] = []

    def __getattr__(self, name):
        return getattr(asyncio, name)

    async def sleep(self, delay, *args, **kwargs):
        self.delays.append(delay)
        return await asyncio.sleep(delay, *args, **kwargs)


def test_latency_is_added_to_every_request(make_server, monkeypatch):
    recorded = _RecordedSleeps()
    monkeypatch.setattr(standin, "asyncio", recorded)
    server = make_server(faults=Faults(latency_ms=300))
    token = requests.post(f"{server.spotify_accounts_base}/api/token", data={"grant_type": "client_credentials"},
                          auth=(CLIENT_ID, CLIENT_SECRET))
    found = requests.get(f"{server.spotify_api_base}/v1/search?q=a&type=track",
                         headers={"Authorization": f"Bearer {token.json()['access_token']}"})
    assert token.status_code == 200 and found.status_code == 200
    assert recorded.delays == [0.3, 0.3], "each request held latency_ms before its answer"


# --------------------------------------------------------------------------- Deezer


def test_deezer_isrc_lookup_and_preview_download(server):
    track = server.catalog[5]
    body = requests.get(f"{server.deezer_api_base}/track/isrc:{track.isrc}").json()
    assert body["id"] == track.deezer_id and body["isrc"] == track.isrc and body["type"] == "track"
    assert body["title"] == track.title and body["artist"]["name"] == track.artist
    assert body["duration"] == track.duration_ms // 1000 and body["album"]["cover_xl"] is None
    assert "hdnea=exp=" in body["preview"] and body["preview"].startswith(server.base_url)
    assert requests.get(f"{server.deezer_api_base}/track/{track.deezer_id}").json()["isrc"] == track.isrc

    download = requests.get(body["preview"])
    assert download.status_code == 200 and download.headers["Content-Type"] == "audio/mpeg"
    assert int(download.headers["Content-Length"]) == len(download.content)
    samples, rate = soundfile.read(io.BytesIO(download.content))
    assert rate == 44100 and 29.0 <= len(samples) / rate <= 31.0


def test_deezer_unknown_isrc_is_an_http_200_error(server):
    response = requests.get(f"{server.deezer_api_base}/track/isrc:QZZZZ9999999")
    assert response.status_code == 200
    assert response.json() == {"error": {"type": "DataException", "message": "no data", "code": 800}}


def test_deezer_missing_share(make_server):
    server = make_server(n_tracks=40, deezer_missing_share=0.5)
    answers = [requests.get(f"{server.deezer_api_base}/track/isrc:{t.isrc}").json() for t in server.catalog]
    missing = sum("error" in answer for answer in answers)
    assert 0 < missing < len(answers)


def test_deezer_search(server):
    track = server.catalog[9]
    found = requests.get(
        f"{server.deezer_api_base}/search", params={"q": f'artist:"{track.artist}" track:"{track.title}"'}
    ).json()
    assert track.deezer_id in {item["id"] for item in found["data"]}
    assert "isrc" not in found["data"][0], "Deezer's search results carry no ISRC"

    page = requests.get(f"{server.deezer_api_base}/search", params={"q": track.style, "limit": 2}).json()
    expected = sum(1 for t in server.catalog if track.style in f"{t.title} {t.artist} {t.album} {t.style}".lower())
    ids = []
    while True:
        ids.extend(item["id"] for item in page["data"])
        if "next" not in page:
            break
        page = requests.get(page["next"]).json()
    assert page["total"] == expected == len(set(ids))


def test_deezer_preview_url_signature_is_checked(server):
    preview = requests.get(f"{server.deezer_api_base}/track/isrc:{server.catalog[2].isrc}").json()["preview"]
    tampered = preview[:-1] + ("0" if preview[-1] != "0" else "1")
    assert requests.get(tampered).status_code == 403
    other_id = server.catalog[3].deezer_id
    moved = preview.replace(f"/{server.catalog[2].deezer_id}.mp3?", f"/{other_id}.mp3?")
    assert requests.get(moved).status_code == 403
    assert requests.get(preview.split("?")[0]).status_code == 403


def test_deezer_preview_url_expires(make_server):
    server = make_server(signed_url_ttl_s=0)
    preview = requests.get(f"{server.deezer_api_base}/track/isrc:{server.catalog[0].isrc}").json()["preview"]
    time.sleep(1.1)
    expired = requests.get(preview)
    assert expired.status_code == 403 and "expired" in expired.text


def test_truncated_preview(server, make_server):
    broken = make_server(n_tracks=60, faults=Faults(truncate_share=1.0))
    track = broken.catalog[4]
    assert track == server.catalog[4], "same config, same catalog"
    whole = requests.get(requests.get(f"{server.deezer_api_base}/track/isrc:{track.isrc}").json()["preview"])
    cut = requests.get(requests.get(f"{broken.deezer_api_base}/track/isrc:{track.isrc}").json()["preview"])
    assert cut.status_code == 200 and int(cut.headers["Content-Length"]) == len(cut.content)
    assert len(cut.content) < 10_000 < int(whole.headers["Content-Length"])
    assert broken.stats["fault truncated"] == 1
    samples, rate = soundfile.read(io.BytesIO(cut.content))  # libsndfile decodes the frames it has
    assert len(samples) / rate < 5.0


def test_deezer_quota_errors(make_server):
    server = make_server(faults=Faults(deezer_quota_rate=1.0))
    response = requests.get(f"{server.deezer_api_base}/track/isrc:{server.catalog[0].isrc}")
    assert response.status_code == 200
    assert response.json() == {"error": {"type": "Exception", "message": "Quota limit exceeded", "code": 4}}
    assert spotify_client(server).search("year:1900-2100")["tracks"]["total"] == 20, "Spotify is unaffected"


# --------------------------------------------------------------------------- rendering and process


def test_concurrent_downloads_render_once(make_server, tmp_path):
    server = make_server(cache_dir=tmp_path, preview_url_share=1.0)
    url = f"{server.base_url}/spotify-cdn/mp3-preview/{server.catalog[0].track_id}"
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        bodies = list(pool.map(lambda _: requests.get(url).content, range(4)))
    assert len(set(bodies)) == 1 and len(bodies[0]) > 100_000
    assert len(list(tmp_path.iterdir())) == 1


def test_command_line_serves_until_sigterm():
    process = subprocess.Popen(
        [sys.executable, "-m", "sonufy_demo.standin", "--port", "0", "--tracks", "20"],
        cwd=REPO_ROOT,
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": str(REPO_ROOT)},
    )
    try:
        banner = process.stdout.readline()
        base_url = banner.split(" on ")[1].split()[0]
        assert base_url.startswith("http://127.0.0.1:")
        token = requests.post(
            f"{base_url}/api/token", data={"grant_type": "client_credentials"}, auth=(CLIENT_ID, CLIENT_SECRET)
        )
        assert token.status_code == 200
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
