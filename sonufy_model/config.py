"""Run settings: where the data lives and how to reach the services.

Real credentials and endpoints come from the environment (see README), never
from code or the DuckDB file. The stand-in fills in its own endpoints and demo
credentials when it is the source.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import urlsplit

SPOTIFY_API_BASE = "https://api.spotify.com"
SPOTIFY_ACCOUNTS_BASE = "https://accounts.spotify.com"
DEEZER_API_BASE = "https://api.deezer.com"

#: Hosts that URLs from the services may point at in production. An entry is
#: "host" (any port) or "host:port"; "*" stands for part of one DNS label.
#: The hosts of the configured endpoints (the API bases above, or the
#: stand-in's) are always allowed as well: we send credentials there anyway.
PRODUCTION_ALLOWED_HOSTS: tuple[str, ...] = (
    "api.deezer.com",
    "cdn-preview-*.dzcdn.net",  # Deezer's preview CDN, signed URLs
    "cdns-preview-*.dzcdn.net",
    "cdnt-preview.dzcdn.net",
    "p.scdn.co",  # Spotify's preview_url, where an app still gets one
    "api.spotify.com",
    "accounts.spotify.com",
)


class Secret(str):
    """A string that does not show itself in reprs, logs or Prefect parameters."""

    def __repr__(self) -> str:
        return "Secret('**********')" if self else "Secret('')"


@dataclass(frozen=True)
class ServiceSettings:
    """Endpoints and credentials of the catalog and preview services."""

    spotify_client_id: str = ""
    spotify_client_secret: Secret = field(default_factory=lambda: Secret(""), repr=False)
    spotify_api_base: str = SPOTIFY_API_BASE
    spotify_accounts_base: str = SPOTIFY_ACCOUNTS_BASE
    deezer_api_base: str = DEEZER_API_BASE
    # Preview sources in the order they are tried: "spotify" (the track's
    # preview_url), "deezer" (by ISRC, else artist + title), "folder" (a file
    # of the user's own under preview_folder, matched by ISRC tag, else by
    # artist + title).
    preview_sources: tuple[str, ...] = ("spotify", "deezer")
    preview_folder: str | None = None
    # Requests in flight at once, per service.
    spotify_concurrency: int = 4
    download_concurrency: int = 8
    request_timeout_s: float = 20.0
    # Requests per second per service, one limiter shared by all of a run's
    # concurrent requests to that service (aiolimiter). Spotify publishes no
    # number (a rolling 30 s window); Deezer allows about 50 requests per 5 s.
    spotify_rate_per_s: float = 10.0
    deezer_rate_per_s: float = 10.0
    # How long one Spotify call may wait out 429s and 5xx before it gives up.
    spotify_max_wait_s: float = 600.0
    # Preview downloads: connections per host (aiohttp's limit_per_host; the
    # total is download_concurrency), tries per track within one run
    # (exponential backoff with jitter, never less than a Retry-After), the
    # longest Retry-After worth waiting for within a run, the size cap of one
    # preview, and the runs that try a track before it stays quarantined
    # (stage 'fetch') until someone releases it (see README).
    download_per_host: int = 4
    download_attempts: int = 4
    max_retry_after_s: float = 60.0
    deezer_quota_wait_s: float = 5.0  # after a quota error (HTTP 200, code 4)
    max_preview_bytes: int = 4 * 1024 * 1024
    fetch_max_attempts: int = 3
    # URL guard: URLs from the services are untrusted input. Requests go only
    # to these schemes and hosts (plus the configured endpoints' hosts, see
    # url_allow_list); loopback, link-local and private addresses only when
    # an exact entry names them.
    allowed_schemes: tuple[str, ...] = ("http", "https")
    allowed_hosts: tuple[str, ...] = PRODUCTION_ALLOWED_HOSTS

    def __post_init__(self) -> None:
        if "folder" in self.preview_sources and not self.preview_folder:
            raise ValueError("the 'folder' preview source needs preview_folder (--preview-folder PATH)")
        for name in ("spotify_rate_per_s", "deezer_rate_per_s"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)!r}")

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> "ServiceSettings":
        env = os.environ if environ is None else environ
        return cls(
            spotify_client_id=env.get("SPOTIFY_CLIENT_ID", env.get("SPOTIPY_CLIENT_ID", "")),
            spotify_client_secret=Secret(
                env.get("SPOTIFY_CLIENT_SECRET", env.get("SPOTIPY_CLIENT_SECRET", ""))
            ),
            spotify_api_base=env.get("SONUFY_SPOTIFY_API_BASE", SPOTIFY_API_BASE).rstrip("/"),
            spotify_accounts_base=env.get(
                "SONUFY_SPOTIFY_ACCOUNTS_BASE", SPOTIFY_ACCOUNTS_BASE
            ).rstrip("/"),
            deezer_api_base=env.get("SONUFY_DEEZER_API_BASE", DEEZER_API_BASE).rstrip("/"),
            spotify_rate_per_s=_env_float(env, "SONUFY_SPOTIFY_RATE_PER_S", cls.spotify_rate_per_s),
            spotify_max_wait_s=_env_float(env, "SONUFY_SPOTIFY_MAX_WAIT_S", cls.spotify_max_wait_s),
            deezer_rate_per_s=_env_float(env, "SONUFY_DEEZER_RATE_PER_S", cls.deezer_rate_per_s),
            allowed_hosts=PRODUCTION_ALLOWED_HOSTS + _env_hosts(env, "SONUFY_ALLOWED_HOSTS"),
        )

    def url_allow_list(self) -> tuple[str, ...]:
        """The allowed hosts plus the host:port of every configured endpoint."""
        endpoints = (self.spotify_api_base, self.spotify_accounts_base, self.deezer_api_base)
        netlocs = (urlsplit(base).netloc.rpartition("@")[2].lower() for base in endpoints)
        return tuple(dict.fromkeys((*self.allowed_hosts, *(n for n in netlocs if n))))

    def with_endpoints(self, **changes) -> "ServiceSettings":
        return replace(self, **changes)

    def require_spotify_credentials(self) -> None:
        if not self.spotify_client_id or not self.spotify_client_secret:
            raise ValueError(
                "Spotify credentials are missing: set SPOTIFY_CLIENT_ID and "
                "SPOTIFY_CLIENT_SECRET (see README), or use --source standin or folder:PATH"
            )


def _env_hosts(env, name: str) -> tuple[str, ...]:
    """A comma-separated list of host or host:port entries; a bad entry is an
    error naming the variable and the entry."""
    hosts = tuple(entry.strip() for entry in env.get(name, "").split(",") if entry.strip())
    for host in hosts:
        try:
            port = urlsplit(f"//{host}").port  # ValueError on a port that is not 0-65535
        except ValueError:
            port = -1
        if port == -1 or not urlsplit(f"//{host}").hostname:
            raise ValueError(f"{name}: {host!r} is not a host or host:port (e.g. cdn.example.com or 10.0.0.1:8080)")
    return hosts


def _env_float(env, name: str, default: float) -> float:
    raw = env.get(name)
    if raw is None or raw.strip() == "":
        return default
    try:
        return float(raw)
    except ValueError:
        raise ValueError(f"{name}={raw!r} is not a number") from None


@dataclass(frozen=True)
class Paths:
    """Where a Sonufy installation keeps its files."""

    db: Path
    data_dir: Path

    @classmethod
    def for_db(cls, db: str | Path, data_dir: str | Path | None = None) -> "Paths":
        db = Path(db).expanduser().resolve()
        data = Path(data_dir).expanduser().resolve() if data_dir else db.with_suffix(".data")
        return cls(db=db, data_dir=data)

    @property
    def previews(self) -> Path:
        return self.data_dir / "previews"

    @property
    def spectrograms(self) -> Path:
        return self.data_dir / "spectrograms"

    @property
    def models(self) -> Path:
        return self.data_dir / "models"
