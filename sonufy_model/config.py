"""Run settings: where the data lives and how to reach the services.

Real credentials and endpoints come from the environment (see README), never
from code or the DuckDB file. The stand-in fills in its own endpoints and demo
credentials when it is the source.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path

SPOTIFY_API_BASE = "https://api.spotify.com"
SPOTIFY_ACCOUNTS_BASE = "https://accounts.spotify.com"
DEEZER_API_BASE = "https://api.deezer.com"


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
    # Preview sources in the order they are tried.
    preview_sources: tuple[str, ...] = ("spotify", "deezer")
    # Requests in flight at once, per service.
    spotify_concurrency: int = 4
    download_concurrency: int = 8
    request_timeout_s: float = 20.0

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
        )

    def with_endpoints(self, **changes) -> "ServiceSettings":
        return replace(self, **changes)

    def require_spotify_credentials(self) -> None:
        if not self.spotify_client_id or not self.spotify_client_secret:
            raise ValueError(
                "Spotify credentials are missing: set SPOTIFY_CLIENT_ID and "
                "SPOTIFY_CLIENT_SECRET (see README), or use --source standin or folder:PATH"
            )


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
