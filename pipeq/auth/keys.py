"""The OIDC issuer's signing keys: its discovery document names a JWKS, kept here in memory.

Keys are fetched outside the request path: once at startup and then by a background thread
every ``refresh_interval`` seconds (sooner after a failure). A token signed with a key id
the set does not hold makes one refetch, at most one per ``refetch_interval`` seconds
whatever the number of such tokens (a key rotated in since the last refresh is found; a
flood of made-up key ids costs the issuer one request per interval; scheduled refreshes do
not count). When the issuer is
down the cached keys keep serving: a failed fetch never empties the set.

Only signing keys of asymmetric types (RSA, EC, OKP) are kept: a symmetric ("oct") key in a
JWKS is never used, so no token can be checked against a secret an attacker knows.
"""

from __future__ import annotations

import json
import logging
import math
import threading
import time
import urllib.request
from typing import NamedTuple

import jwt

log = logging.getLogger("pipeq.auth")

#: The key types a signature may be checked with, by algorithm family.
KEY_TYPES = {"RS": "RSA", "PS": "RSA", "ES": "EC", "Ed": "OKP"}
MAX_DOCUMENT_BYTES = 1024 * 1024


class SigningKey(NamedTuple):
    """One key of the set: PyJWT's key, the algorithm the JWK itself names (or None), and
    the JWK as published."""

    jwk: jwt.PyJWK
    alg: str | None
    raw: dict


class IssuerUnavailable(Exception):
    """The issuer's discovery document or JWKS could not be read (the message says why)."""


class KeySet:
    """The issuer's signing keys by key id. ``fetches`` counts JWKS fetches (tried)."""

    def __init__(self, issuer: str, *, refresh_interval: float = 300.0, refetch_interval: float = 30.0,
                 retry_interval: float = 5.0, timeout: float = 5.0):
        self.issuer = issuer
        self.refresh_interval, self.refetch_interval = refresh_interval, refetch_interval
        self.retry_interval, self.timeout = retry_interval, timeout
        self.fetches = 0
        #: bumped whenever the set's keys change (what was verified with a key gone is not trusted)
        self.generation = 0
        self._keys: dict[str, SigningKey] = {}
        self._jwks_uri: str | None = None
        #: the issuer's discovery document, once read (the web sign-in takes its endpoints)
        self.discovery: dict | None = None
        self._last_refetch = -math.inf  # monotonic time of the latest refetch for an unknown kid
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lookups -------------------------------------------------------------------------------

    def cached(self, kid: str | None) -> SigningKey | None:
        """The key ``kid`` if the set holds it (no I/O: for the request path)."""
        return self._keys.get(kid or "")

    def get(self, kid: str | None) -> SigningKey | None:
        """The key ``kid``, refetching the set once if it is unknown and the last such refetch
        is older than ``refetch_interval`` (blocking: call it off the event loop)."""
        if (key := self.cached(kid)) is not None:
            return key
        with self._lock:  # concurrent unknown kids wait for one refetch and share its result
            if (key := self.cached(kid)) is None and time.monotonic() - self._last_refetch >= self.refetch_interval:
                self._last_refetch = time.monotonic()
                self._refresh_locked()
                key = self.cached(kid)
            return key

    @property
    def has_keys(self) -> bool:
        return bool(self._keys)

    # -- fetching ------------------------------------------------------------------------------

    def refresh(self) -> bool:
        """Fetch the set now; True on success. A failure keeps the keys held (logged)."""
        with self._lock:
            return self._refresh_locked()

    def _refresh_locked(self) -> bool:
        try:
            if self._jwks_uri is None:
                self._jwks_uri = self._discover()
            self.fetches += 1
            keys = parse_jwks(self._read(self._jwks_uri))
        except IssuerUnavailable as e:
            log.warning("pipeq.auth: cannot refresh the signing keys of %s (keeping %d held): %s",
                        self.issuer, len(self._keys), e)
            return False
        if {k: v.raw for k, v in keys.items()} != {k: v.raw for k, v in self._keys.items()}:
            self.generation += 1
        self._keys = keys
        return True

    def _discover(self) -> str:
        url = self.issuer.rstrip("/") + "/.well-known/openid-configuration"
        doc = self._read(url)
        if doc.get("issuer") != self.issuer:
            raise IssuerUnavailable(f"{url} names the issuer {doc.get('issuer')!r}, not {self.issuer!r}")
        uri = doc.get("jwks_uri")
        if not isinstance(uri, str) or not uri.startswith(("https://", "http://")):
            raise IssuerUnavailable(f"{url} names no jwks_uri")
        self.discovery = doc
        return uri

    def _read(self, url: str) -> dict:
        try:
            with urllib.request.urlopen(urllib.request.Request(url, headers={"Accept": "application/json"}),
                                        timeout=self.timeout) as r:
                body = r.read(MAX_DOCUMENT_BYTES + 1)
        except OSError as e:  # URLError, HTTPError, timeouts
            raise IssuerUnavailable(f"{url}: {getattr(e, 'reason', e)}") from None
        if len(body) > MAX_DOCUMENT_BYTES:
            raise IssuerUnavailable(f"{url}: more than {MAX_DOCUMENT_BYTES} bytes")
        try:
            doc = json.loads(body)
        except ValueError:
            raise IssuerUnavailable(f"{url}: not JSON") from None
        if not isinstance(doc, dict):
            raise IssuerUnavailable(f"{url}: not a JSON object")
        return doc

    # -- the background refresh ----------------------------------------------------------------

    def start(self) -> KeySet:
        """Fetch once now (a failure is logged: the thread retries), then keep refreshing."""
        if self._thread is None:
            ok = self.refresh()
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, args=(ok,), name="pipeq-jwks", daemon=True)
            self._thread.start()
        return self

    def _run(self, ok: bool) -> None:
        while not self._stop.wait(self.refresh_interval if ok else self.retry_interval):
            ok = self.refresh()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=self.timeout + 1)
            self._thread = None


def parse_jwks(doc: dict) -> dict[str, SigningKey]:
    """The signing keys of a JWKS document by key id: asymmetric ones only, ``use`` sig or
    unset, with a ``kid``. Raises IssuerUnavailable when it is not a JWKS."""
    found = doc.get("keys")
    if not isinstance(found, list):
        raise IssuerUnavailable("the JWKS has no keys list")
    keys: dict[str, SigningKey] = {}
    for jwk in found:
        if not isinstance(jwk, dict) or jwk.get("kty") not in KEY_TYPES.values():
            continue
        if jwk.get("use", "sig") != "sig" or not isinstance(jwk.get("kid"), str):
            continue
        try:
            keys[jwk["kid"]] = SigningKey(jwt.PyJWK(jwk), jwk.get("alg"), jwk)
        except jwt.PyJWTError as e:  # an algorithm or curve PyJWT cannot use
            log.info("pipeq.auth: skipping key %s: %s", jwk.get("kid"), e)
    return keys
