"""A list into the listener's own Spotify account (``--to-spotify NAME``).

The listener logs in once with the Authorization Code flow with PKCE
(spotipy's ``SpotifyPKCE``: the app's client id, no secret), scope
``playlist-modify-private``. The token and its refresh token are kept in one
file readable by its owner only (mode 0600, written whole: a reader sees the
old token or the new one), ``ServiceSettings.spotify_token_file``; never in
the store, a Prefect parameter or a log line: spotipy's debug lines, which
print request headers and token requests, pass through :class:`RedactSecrets`.

A push finds the listener's playlist of that name whose description carries
:data:`MARKER` (a playlist of the same name that Sonufy did not make is left
alone), else creates it private; then replaces its items with the list, 100
a request (``PUT /playlists/{id}/items`` for the first hundred, ``POST`` for
the rest: the 2026 names of the items endpoints). Tracks without a Spotify id
(a folder library's files) are skipped and counted. Every request goes
through the catalog client's retries (429s wait for Retry-After up to
``spotify_max_wait_s``, 5xx back off, a 401 refreshes the token).
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import secrets
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import requests
import spotipy
from spotipy.cache_handler import CacheHandler
from spotipy.oauth2 import SpotifyOauthError, SpotifyPKCE

import sql
from sonufy_model.catalog import _message, _Spotify, api_client, spotify_limiter
from sonufy_model.config import ServiceSettings
from sonufy_model.errors import BadCredentials, ServiceError, Unreachable
from sonufy_model.outputs import write_atomically

SCOPE = "playlist-modify-private"
#: What a playlist Sonufy made says at the end of its description: only such a playlist is replaced.
MARKER = "[made by Sonufy]"
#: Items per add or replace request (Spotify's limit).
ITEMS_PER_REQUEST = 100
MY_PLAYLISTS_PAGE = 50
#: A new playlist's description, the marker left out (Spotify keeps 300 characters).
DESCRIPTION_CHARS = 280
SQL_FILE = "playlists.sql"
LOGIN_HINT = "run `sonufy playlist login`"


class NotLoggedIn(BadCredentials):
    """No usable login of the listener is saved; the message says how to make one."""


# -- secrets stay out of logs ------------------------------------------------------------


class RedactSecrets(logging.Filter):
    """Masks bearer tokens, refresh tokens, codes and code verifiers in a log record's message."""

    _SECRET = re.compile(r"(Bearer\s+)[^\s'\"}]+"
                         r"|('(?:access_token|refresh_token|code|code_verifier)':\s*')[^']*(')")

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = self._SECRET.sub(lambda m: f"{m[1] or m[2]}***{m[3] or ''}", message)
        if masked != message:
            record.msg, record.args = masked, ()
        return True


_REDACT = RedactSecrets()
for _name in ("spotipy.client", "spotipy.oauth2"):
    if _REDACT not in logging.getLogger(_name).filters:
        logging.getLogger(_name).addFilter(_REDACT)


# -- the token file ----------------------------------------------------------------------


def token_file(settings: ServiceSettings) -> Path:
    """Where the listener's token is kept: the setting, else the user's cache folder."""
    if settings.spotify_token_file:
        return Path(settings.spotify_token_file).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(cache) / "sonufy" / "spotify-token.json"


class TokenFile(CacheHandler):
    """spotipy's token cache as one JSON file, mode 0600, replaced whole on each save."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def get_cached_token(self) -> dict | None:
        try:
            return json.loads(self.path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            return None
        except (ValueError, OSError):  # damaged or unreadable: as if there were none, a login replaces it
            return None

    def save_token_to_cache(self, token_info: dict | None) -> None:
        if token_info is None:
            # A token refused in flight (the retries' 401): keep the refresh
            # token, so that the next call refreshes instead of logging in.
            token_info = self.get_cached_token()
            if token_info is None:
                return
            token_info = {**token_info, "expires_at": 0}
        data = json.dumps(token_info).encode()
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)

        def write(staged: Path) -> None:
            handle = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            try:
                os.fchmod(handle, 0o600)  # whatever the umask
                os.write(handle, data)
            finally:
                os.close(handle)

        write_atomically(self.path, write)


# -- logging in ------------------------------------------------------------------------


class _ListenerAuth(SpotifyPKCE):
    """SpotifyPKCE that never asks on a terminal behind our back: without a
    saved login it raises :class:`NotLoggedIn` (the nightly has no one to ask)."""

    def get_authorization_code(self, response=None):
        if response:
            return super().get_authorization_code(response)
        raise NotLoggedIn(f"no Spotify login saved in {self.cache_handler.path}: {LOGIN_HINT}")


def _auth(settings: ServiceSettings) -> _ListenerAuth:
    if not settings.spotify_client_id:
        raise BadCredentials("--to-spotify needs the app's client id: set SPOTIFY_CLIENT_ID "
                             "(an app at developer.spotify.com with SONUFY_SPOTIFY_REDIRECT_URI registered)")
    auth = _ListenerAuth(client_id=settings.spotify_client_id, redirect_uri=settings.spotify_redirect_uri,
                         scope=SCOPE, cache_handler=TokenFile(token_file(settings)), open_browser=False,
                         requests_timeout=settings.request_timeout_s)
    auth.OAUTH_AUTHORIZE_URL = f"{settings.spotify_accounts_base}/authorize"
    auth.OAUTH_TOKEN_URL = f"{settings.spotify_accounts_base}/api/token"
    return auth


def _refused(error: SpotifyOauthError, path: Path) -> BadCredentials:
    return BadCredentials(
        f"Spotify's accounts service refused the login ({error.error}: {error.error_description}): "
        f"check SPOTIFY_CLIENT_ID and SONUFY_SPOTIFY_REDIRECT_URI, then {LOGIN_HINT} (token file {path})")


def _unreachable(settings: ServiceSettings, error: Exception) -> Unreachable:
    return Unreachable(f"Spotify's accounts service: cannot reach {settings.spotify_accounts_base} "
                       f"({type(error).__name__}): check SONUFY_SPOTIFY_ACCOUNTS_BASE and the network")


def ensure_login(settings: ServiceSettings, ask: Callable[[str], str] | None = None, again: bool = False) -> Path:
    """A usable login saved in the token file (an expired token refreshed);
    the file's path. Without one (or with ``again``), ``ask`` is given the
    address to approve the app at and returns the address the browser was
    sent back to; with no ``ask``, :class:`NotLoggedIn`."""
    auth = _auth(settings)
    path = auth.cache_handler.path
    try:
        if not again and auth.validate_token(auth.cache_handler.get_cached_token()) is not None:
            return path
        if ask is None:
            raise NotLoggedIn(f"no Spotify login saved in {path}: {LOGIN_HINT}")
        state = secrets.token_urlsafe(16)
        answer = ask(auth.get_authorize_url(state=state)).strip()
        try:
            returned_state, code = auth.parse_auth_response_url(answer)
        except SpotifyOauthError as error:
            raise BadCredentials(f"Spotify did not approve the login ({error.error}): approve Sonufy on "
                                 f"the page, then paste the address it sends you to") from None
        if not code or returned_state != state:
            raise BadCredentials("the address pasted is not the answer to this login (no code, or another "
                                 f"login's state): {LOGIN_HINT} and paste the address the browser shows")
        auth.get_access_token(code=code, check_cache=False)
    except SpotifyOauthError as error:
        raise _refused(error, path) from None
    except requests.ConnectionError as error:
        raise _unreachable(settings, error) from None
    return path


# -- pushing a list -----------------------------------------------------------------------


@dataclass(frozen=True)
class Pushed:
    """What a push did: the playlist, whether it was made now, tracks sent and tracks skipped."""

    name: str
    playlist_id: str
    created: bool
    tracks: int
    skipped: int

    @property
    def url(self) -> str:
        return f"https://open.spotify.com/playlist/{self.playlist_id}"

    def summary(self) -> str:
        made = "made" if self.created else "replaced"
        skipped = (f"; {self.skipped} tracks without a Spotify id (your own files) left out"
                   if self.skipped else "")
        return f"Spotify playlist '{self.name}' {made} with {self.tracks} tracks{skipped}: {self.url}"


def spotify_uris(store, track_ids: Sequence[str]) -> tuple[list[str], int]:
    """The Spotify URIs of these tracks, in order, and how many have none (folder tracks)."""
    with store.connect() as con:
        rows = dict(con.execute(sql.statement("playlist_spotify_uris", SQL_FILE),
                                {"track_ids": list(track_ids)}).fetchall())
    uris = [rows[track_id] for track_id in track_ids if rows.get(track_id)]
    return uris, len(track_ids) - len(uris)


def push_playlist(settings: ServiceSettings, name: str, uris: Sequence[str], skipped: int = 0,
                  description: str = "") -> Pushed:
    """The listener's playlist ``name`` (made by Sonufy) holding ``uris``, in order."""
    ensure_login(settings)  # before any request: a clear message when there is no login
    auth = _auth(settings)
    spotify = _Spotify(api_client(settings, auth), spotify_limiter(settings), asyncio.Semaphore(1),
                       settings.spotify_max_wait_s)
    try:
        playlist_id, created = asyncio.run(_push(spotify, name, list(uris), description))
    except NotLoggedIn:
        raise
    except BadCredentials as error:  # the catalog client's words are about client credentials
        cause = error.__cause__
        raise (_refused(cause, auth.cache_handler.path) if isinstance(cause, SpotifyOauthError) else error) from None
    except spotipy.SpotifyException as error:
        raise ServiceError(f"Spotify refused to write the playlist '{name}' ({_message(error)}): check the "
                           f"login's scope ({SCOPE}; {LOGIN_HINT}) and SONUFY_SPOTIFY_API_BASE") from None
    return Pushed(name, playlist_id, created, len(uris), skipped)


async def _push(spotify: _Spotify, name: str, uris: list[str], description: str) -> tuple[str, bool]:
    me = (await spotify.call("me"))["id"]
    playlist_id = await _sonufys_playlist(spotify, name, me)
    created = playlist_id is None
    if created:
        # Spotify keeps 300 characters of a description: the marker must be among them.
        text = description if len(description) <= DESCRIPTION_CHARS else description[:DESCRIPTION_CHARS - 1] + "…"
        made = await spotify.call("current_user_playlist_create", name, public=False,
                                  description=f"{text} {MARKER}".strip())
        playlist_id = made["id"]
    batches = [uris[i:i + ITEMS_PER_REQUEST] for i in range(0, len(uris), ITEMS_PER_REQUEST)] or [[]]
    await spotify.call("playlist_replace_items", playlist_id, batches[0])
    for batch in batches[1:]:
        await spotify.call("playlist_add_items", playlist_id, batch)
    return playlist_id, created


async def _sonufys_playlist(spotify: _Spotify, name: str, me: str) -> str | None:
    """The id of the listener's playlist ``name`` whose description has the marker, or None."""
    offset = 0
    while True:
        page = await spotify.call("current_user_playlists", limit=MY_PLAYLISTS_PAGE, offset=offset)
        for playlist in page.get("items") or []:
            if (playlist and playlist.get("name") == name and (playlist.get("owner") or {}).get("id") == me
                    and MARKER in (playlist.get("description") or "")):
                return playlist["id"]
        if not page.get("next"):
            return None
        offset += MY_PLAYLISTS_PAGE
