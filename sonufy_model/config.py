"""Run settings: where the data lives and how to reach the services.

Real credentials and endpoints come from the environment (see README), never
from code or the DuckDB file. The stand-in fills in its own endpoints and demo
credentials when it is the source.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import urlsplit

from pydantic import AliasChoices, Field, SecretStr, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, EnvSettingsSource, NoDecode, SettingsConfigDict

SPOTIFY_API_BASE = "https://api.spotify.com"
SPOTIFY_ACCOUNTS_BASE = "https://accounts.spotify.com"
DEEZER_API_BASE = "https://api.deezer.com"
SPOTIFY_REDIRECT_URI = "http://127.0.0.1:8888/callback"

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


#: The environment variables ServiceSettings.from_env reads, by field (the
#: first one set wins; an empty one counts as unset).
ENVIRONMENT = {
    "spotify_client_id": ("SPOTIFY_CLIENT_ID", "SPOTIPY_CLIENT_ID"),
    "spotify_client_secret": ("SPOTIFY_CLIENT_SECRET", "SPOTIPY_CLIENT_SECRET"),
    "spotify_api_base": ("SONUFY_SPOTIFY_API_BASE",),
    "spotify_accounts_base": ("SONUFY_SPOTIFY_ACCOUNTS_BASE",),
    "deezer_api_base": ("SONUFY_DEEZER_API_BASE",),
    "spotify_rate_per_s": ("SONUFY_SPOTIFY_RATE_PER_S",),
    "spotify_max_wait_s": ("SONUFY_SPOTIFY_MAX_WAIT_S",),
    "deezer_rate_per_s": ("SONUFY_DEEZER_RATE_PER_S",),
    "allowed_hosts": ("SONUFY_ALLOWED_HOSTS",),
    "spotify_redirect_uri": ("SONUFY_SPOTIFY_REDIRECT_URI", "SPOTIPY_REDIRECT_URI"),
    "spotify_token_file": ("SONUFY_SPOTIFY_TOKEN_FILE",),
}


def _from(field: str) -> AliasChoices:
    """A field's environment variables, and its own name for keyword construction."""
    return AliasChoices(field, *ENVIRONMENT[field])


class ServiceSettings(BaseSettings):
    """Endpoints and credentials of the catalog and preview services.

    Immutable; ``with_endpoints`` makes a changed, validated copy. Only
    :meth:`from_env` reads the environment: plain construction takes the
    defaults and what it is given. The client secret is a ``SecretStr``: its
    repr, ``str()``, a Prefect parameter and any log line show ``**********``,
    and only the Spotify client reads it (``get_secret_value()``). A bad value
    is a ``ValueError`` naming the variable (or field) it came from.
    """

    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        case_sensitive=True,
        env_ignore_empty=True,
        validate_by_name=True,
        validate_by_alias=True,
    )

    spotify_client_id: str = Field("", validation_alias=_from("spotify_client_id"))
    spotify_client_secret: SecretStr = Field(SecretStr(""), validation_alias=_from("spotify_client_secret"))
    spotify_api_base: str = Field(SPOTIFY_API_BASE, validation_alias=_from("spotify_api_base"))
    spotify_accounts_base: str = Field(SPOTIFY_ACCOUNTS_BASE, validation_alias=_from("spotify_accounts_base"))
    deezer_api_base: str = Field(DEEZER_API_BASE, validation_alias=_from("deezer_api_base"))
    # --to-spotify: the listener's login (Authorization Code with PKCE, only
    # the client id): the redirect URI registered for the app, and the file
    # that keeps the listener's token, readable by its owner only (default:
    # $XDG_CACHE_HOME/sonufy/spotify-token.json, else ~/.cache/...).
    spotify_redirect_uri: str = Field(SPOTIFY_REDIRECT_URI, validation_alias=_from("spotify_redirect_uri"))
    spotify_token_file: str | None = Field(None, validation_alias=_from("spotify_token_file"))
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
    spotify_rate_per_s: float = Field(10.0, validation_alias=_from("spotify_rate_per_s"))
    deezer_rate_per_s: float = Field(10.0, validation_alias=_from("deezer_rate_per_s"))
    # How long one Spotify call may wait out 429s and 5xx before it gives up.
    spotify_max_wait_s: float = Field(600.0, validation_alias=_from("spotify_max_wait_s"))
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
    # an exact entry names them. From the environment, SONUFY_ALLOWED_HOSTS
    # (comma-separated host or host:port entries) adds to the production hosts.
    allowed_schemes: tuple[str, ...] = ("http", "https")
    allowed_hosts: Annotated[tuple[str, ...], NoDecode] = Field(
        PRODUCTION_ALLOWED_HOSTS, validation_alias=_from("allowed_hosts")
    )

    def __init__(self, **values: Any) -> None:
        try:
            super().__init__(**values)
        except ValidationError as error:
            raise ValueError(_described(error)) from None

    @classmethod
    def settings_customise_sources(cls, settings_cls, init_settings, env_settings, dotenv_settings,
                                   file_secret_settings):
        return (init_settings,)  # the environment only through from_env

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> "ServiceSettings":
        """The settings of ``environ`` (default: this process's environment)."""
        source = _Environment(cls, os.environ if environ is None else environ)
        # Keyed by the variable each value came from, so that an error names it.
        return cls(**{source.variable(field): value for field, value in source().items()})

    @field_validator("spotify_api_base", "spotify_accounts_base", "deezer_api_base")
    @classmethod
    def _no_trailing_slash(cls, base: str) -> str:
        return base.rstrip("/")

    @field_validator("spotify_rate_per_s", "deezer_rate_per_s")
    @classmethod
    def _positive(cls, rate: float) -> float:
        if not rate > 0:
            raise ValueError(f"must be positive, got {rate!r}")
        return rate

    @field_validator("allowed_hosts", mode="before")
    @classmethod
    def _hosts_from_env(cls, hosts: Any) -> Any:
        """SONUFY_ALLOWED_HOSTS's comma-separated entries, after the production
        hosts; a bad entry is an error naming the entry."""
        if not isinstance(hosts, str):
            return hosts
        entries = tuple(entry.strip() for entry in hosts.split(",") if entry.strip())
        for host in entries:
            try:
                port = urlsplit(f"//{host}").port  # ValueError on a port that is not 0-65535
            except ValueError:
                port = -1
            if port == -1 or not urlsplit(f"//{host}").hostname:
                raise ValueError(f"{host!r} is not a host or host:port (e.g. cdn.example.com or 10.0.0.1:8080)")
        return PRODUCTION_ALLOWED_HOSTS + entries

    @model_validator(mode="after")
    def _folder_source_has_a_folder(self) -> "ServiceSettings":
        if "folder" in self.preview_sources and not self.preview_folder:
            raise ValueError("the 'folder' preview source needs preview_folder (--preview-folder PATH)")
        return self

    def url_allow_list(self) -> tuple[str, ...]:
        """The allowed hosts plus the host:port of every configured endpoint."""
        endpoints = (self.spotify_api_base, self.spotify_accounts_base, self.deezer_api_base)
        netlocs = (urlsplit(base).netloc.rpartition("@")[2].lower() for base in endpoints)
        return tuple(dict.fromkeys((*self.allowed_hosts, *(n for n in netlocs if n))))

    def with_endpoints(self, **changes: Any) -> "ServiceSettings":
        """A copy with ``changes`` (any fields, by name), validated as a new one is."""
        return type(self)(**{**dict(self), **changes})

    def require_spotify_credentials(self) -> None:
        if not self.spotify_client_id or not self.spotify_client_secret.get_secret_value():
            raise ValueError(
                "Spotify credentials are missing: set SPOTIFY_CLIENT_ID and "
                "SPOTIFY_CLIENT_SECRET (see README), or use --source standin or folder:PATH"
            )


class _Environment(EnvSettingsSource):
    """pydantic-settings' environment source over a given mapping, limited to
    the variables of ``ENVIRONMENT``."""

    def __init__(self, settings_cls: type[BaseSettings], environ: Mapping[str, str]):
        names = {name for names in ENVIRONMENT.values() for name in names}
        self._environ = {name: value for name, value in environ.items() if name in names}
        super().__init__(settings_cls)

    def variable(self, field: str) -> str:
        """The variable ``field``'s value comes from: the first one set."""
        return next(name for name in ENVIRONMENT[field] if self.env_vars.get(name) is not None)

    def _load_env_vars(self) -> Mapping[str, str | None]:
        return {name: value for name, value in self._environ.items() if not (self.env_ignore_empty and value == "")}


def _described(error: ValidationError) -> str:
    """A validation error in one line per problem: the variable or field it
    came from, what is wrong, and the value given (never the secret's)."""
    lines = []
    for problem in error.errors(include_url=False):
        where = ".".join(str(part) for part in problem["loc"])
        message = problem["msg"].removeprefix("Value error, ")
        secret = {"spotify_client_secret", *ENVIRONMENT["spotify_client_secret"]} & set(problem["loc"])
        if where and not secret and problem["type"] not in ("value_error", "missing") and isinstance(
            problem.get("input"), (str, int, float)
        ):
            message += f" (got {problem['input']!r})"
        lines.append(f"{where}: {message}" if where else message)
    return "; ".join(lines)


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
