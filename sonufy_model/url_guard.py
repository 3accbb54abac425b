"""The URL guard: where a preview request may go, and how requests fail.

Every URL is untrusted input: :class:`UrlPolicy` lets requests go only to
http(s) URLs on allowed hosts, and refuses loopback, link-local and private
addresses unless an exact allow-list entry names them (the stand-in's host,
when the stand-in is configured). It is checked before every request, on
every redirect (:func:`guarded_get`), and again on the addresses a host name
resolves to (:class:`GuardedResolver`).

A request ends in :class:`TransientError` (worth another try: a 429, a 5xx,
an expired URL) or :class:`PermanentError` (not in this run), of which
:class:`UrlRefused` is the guard's refusal. Shown URLs lose their query
string, where signed URLs carry their signature (:func:`redact_url`).
"""

from __future__ import annotations

import ipaddress
import re
import socket
from collections.abc import AsyncIterator, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass

import aiohttp
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver
from yarl import URL

from sonufy_model.config import ServiceSettings
from sonufy_model.retries import retry_after_seconds

MAX_REDIRECTS = 3
_REDIRECTS = frozenset({301, 302, 303, 307, 308})
_QUERY_IN_TEXT = re.compile(r"(\w+://[^\s?'\"<>]+)\?[^\s'\"<>]*")


class TransientError(RuntimeError):
    """Worth another try: a 429, a 5xx, a timeout, a truncated body, an expired URL."""

    def __init__(self, message: str, retry_after_s: float = 0.0):
        super().__init__(message)
        self.retry_after_s = retry_after_s


class PermanentError(RuntimeError):
    """Not worth another try in this run: too big, refused, an unexpected status."""


class UrlRefused(PermanentError):
    """The URL guard refused a URL before any request was made."""


# --------------------------------------------------------------------------- the guard


def _normal_host(host: str) -> str:
    return host.strip().strip("[]").rstrip(".").lower()


def _ip(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(host.split("%", 1)[0])
    except ValueError:
        return None


def _is_public(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Not loopback, private, link-local, shared, reserved, unspecified or multicast."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        address = address.ipv4_mapped
    return address.is_global and not address.is_multicast


def _split_entry(entry: str) -> tuple[str, int | None]:
    """An allow-list entry ("host", "host:port", "[v6]:port") as (host, port or None)."""
    entry = entry.strip()
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        port = rest[1:] if rest.startswith(":") else ""
    elif entry.count(":") == 1:
        host, _, port = entry.partition(":")
    else:
        host, port = entry, ""
    return _normal_host(host), int(port) if port else None


@dataclass(frozen=True)
class UrlPolicy:
    """Which URLs requests may go to.

    ``exact`` entries are trusted as named, loopback or private addresses
    included (that is how the stand-in on 127.0.0.1 is allowed); ``patterns``
    (entries with ``*``, which stands for part of one DNS label) match public
    host names only.
    """

    schemes: frozenset[str]
    exact: frozenset[tuple[str, int | None]]
    patterns: tuple[tuple[re.Pattern[str], int | None], ...]

    @classmethod
    def from_entries(cls, hosts: Iterable[str], schemes: Iterable[str] = ("http", "https")) -> "UrlPolicy":
        exact: set[tuple[str, int | None]] = set()
        patterns: list[tuple[re.Pattern[str], int | None]] = []
        for entry in hosts:
            host, port = _split_entry(entry)
            if not host:
                continue
            if "*" in host:
                regex = "".join("[^.]*" if part == "*" else re.escape(part) for part in re.split(r"(\*)", host))
                patterns.append((re.compile(regex), port))
            else:
                exact.add((host, port))
        return cls(frozenset(s.lower() for s in schemes), frozenset(exact), tuple(patterns))

    @classmethod
    def from_settings(cls, settings: ServiceSettings) -> "UrlPolicy":
        """The settings' allow-list plus the hosts of their configured endpoints."""
        return cls.from_entries(settings.url_allow_list(), settings.allowed_schemes)

    def names(self, host: str, port: int | None) -> bool:
        """Whether an exact entry names this host (and port)."""
        host = _normal_host(host)
        return (host, None) in self.exact or (host, port) in self.exact

    def _matches_pattern(self, host: str, port: int | None) -> bool:
        return any(regex.fullmatch(host) and wanted in (None, port) for regex, wanted in self.patterns)

    def check(self, url: str | URL) -> URL:
        """The URL, parsed, if requests may go there; UrlRefused otherwise."""
        shown = redact_url(str(url))
        try:
            parsed = url if isinstance(url, URL) else URL(str(url))
        except (ValueError, TypeError) as error:
            raise UrlRefused(f"{shown}: not a URL ({error})") from None
        scheme = (parsed.scheme or "").lower()
        if scheme not in self.schemes:
            allowed = ", ".join(sorted(self.schemes))
            raise UrlRefused(f"{shown}: scheme {scheme or 'none'!r} is not allowed ({allowed} only)")
        if not parsed.raw_host:
            raise UrlRefused(f"{shown}: no host")
        if parsed.raw_user or parsed.raw_password:
            raise UrlRefused(f"{shown}: credentials in a URL are not allowed")
        host, port = _normal_host(parsed.raw_host), parsed.port
        if self.names(host, port):
            return parsed
        address = _ip(host)
        if address is not None:
            if not _is_public(address):
                raise UrlRefused(f"{shown}: {host} is a loopback, private or link-local address")
            raise UrlRefused(f"{shown}: {host} is not an allowed host")
        if host == "localhost" or host.endswith(".localhost"):
            raise UrlRefused(f"{shown}: {host} is a loopback host")
        if self._matches_pattern(host, port):
            return parsed
        raise UrlRefused(f"{shown}: {host} is not an allowed host")

    def allows(self, url: str | URL) -> bool:
        try:
            self.check(url)
        except UrlRefused:
            return False
        return True


class GuardedResolver(AbstractResolver):
    """DNS that refuses non-public addresses for hosts no exact entry names.

    A host name matched by a pattern (``cdn-preview-*.dzcdn.net``) must not
    resolve to 127.0.0.1 or 10.0.0.5: that would reach our own network.
    """

    def __init__(self, policy: UrlPolicy):
        self._policy = policy
        self._inner = DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        if self._policy.names(host, port):
            return results
        public = [r for r in results if (a := _ip(r["host"])) is not None and _is_public(a)]
        if not public:
            raise UrlRefused(f"{host} resolves only to loopback, private or link-local addresses")
        return public

    async def close(self) -> None:
        await self._inner.close()


def redact_url(url: str) -> str:
    """A URL without its query string (signed URLs carry their signature there) or credentials."""
    return re.sub(r"^(\w+://)[^/@?#]*@", r"\1", str(url).split("?", 1)[0])


def redact_text(text: str) -> str:
    """``text`` with every URL in it redacted of its query string."""
    return _QUERY_IN_TEXT.sub(r"\1", text)


@asynccontextmanager
async def guarded_get(
    session: aiohttp.ClientSession, url: str | URL, policy: UrlPolicy, **kwargs
) -> AsyncIterator[aiohttp.ClientResponse]:
    """GET after the guard allowed the URL, following redirects only to allowed URLs."""
    target = policy.check(url)
    for _ in range(MAX_REDIRECTS + 1):
        async with session.get(target, allow_redirects=False, **kwargs) as response:
            location = response.headers.get("Location")
            if response.status in _REDIRECTS and location:
                target = policy.check(response.url.join(URL(location)))
                continue
            yield response
            return
    raise PermanentError(f"{redact_url(str(url))}: more than {MAX_REDIRECTS} redirects")


# --------------------------------------------------------------------------- a response's status


def raise_for_transient_status(response: aiohttp.ClientResponse, url: str, max_retry_after_s: float = 60.0) -> None:
    """TransientError for a 429 (with its Retry-After) or a 5xx; PermanentError for a
    Retry-After longer than ``max_retry_after_s``."""
    if response.status == 429:
        retry_after = retry_after_seconds(response.headers.get("Retry-After"))
        if retry_after > max_retry_after_s:
            raise PermanentError(
                f"{redact_url(url)}: HTTP 429, Retry-After {retry_after:.0f} s is too long for this run"
            )
        raise TransientError(f"{redact_url(url)}: HTTP 429 (Retry-After {retry_after:g} s)", retry_after_s=retry_after)
    if response.status >= 500:
        raise TransientError(f"{redact_url(url)}: HTTP {response.status}")

