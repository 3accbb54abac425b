"""``sonufy playlist``: the listener's Spotify login for ``--to-spotify``."""

from __future__ import annotations

import argparse

from flows.cli.common import paste_redirect


def add_playlist(commands) -> None:
    playlist = commands.add_parser(
        "playlist",
        help="playlists kept by Sonufy: the Spotify login for --to-spotify",
        description="The Spotify login that --to-spotify uses.",
    )
    actions = playlist.add_subparsers(dest="action", required=True, metavar="ACTION")
    login = actions.add_parser(
        "login",
        help="log in to Spotify for --to-spotify (the token is kept in a file only you can read)",
        description="Log in to your Spotify account with the Authorization Code flow with PKCE (scope "
        "playlist-modify-private): open the address printed, approve Sonufy, paste the address your browser "
        "is sent to. Needs SPOTIFY_CLIENT_ID; the token goes to SONUFY_SPOTIFY_TOKEN_FILE "
        "(default ~/.cache/sonufy/spotify-token.json), mode 0600.",
    )
    login.add_argument("--again", action="store_true", help="log in even when a login is saved")
    login.set_defaults(handler=_login)


def _login(args: argparse.Namespace) -> None:
    from sonufy_model.config import ServiceSettings
    from sonufy_model.spotify_user import ensure_login

    path = ensure_login(ServiceSettings.from_env(), ask=paste_redirect, again=args.again)
    print(f"logged in to Spotify; the token is kept in {path} (readable by you only)")
