"""Errors a catalog service can end a command with, each naming its cause.

Kept apart from the clients (spotipy, aiohttp) so that the command line can
tell them apart without importing either.
"""

from __future__ import annotations


class ServiceError(RuntimeError):
    """A catalog service could not be used; the message names the cause and what to check."""


class RateLimited(ServiceError):
    """The service kept answering 429 (or 5xx) for longer than we are willing to wait."""


class BadCredentials(ServiceError):
    """The accounts service refused the client id and secret."""


class Unreachable(ServiceError):
    """No connection to the service could be made, try after try."""
