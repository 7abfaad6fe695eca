"""Verifying an OIDC bearer token (a JWT) with PyJWT.

A token is accepted when: its algorithm is one of ``ALGORITHMS`` (asymmetric only: never
``none``, never HMAC, so a public key can never be used as an HMAC secret); its key id names
a signing key of the issuer's JWKS whose type fits that algorithm (and whose own ``alg``, if
it has one, is that algorithm); the signature verifies; ``iss`` is the configured issuer
exactly; ``aud`` names the configured audience; ``exp`` is in the future and ``nbf`` (if
any) in the past, with ``LEEWAY`` seconds for clocks that differ; ``sub`` is present.
"""

from __future__ import annotations

import jwt

from pipeq.auth.keys import KEY_TYPES, KeySet, SigningKey

ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA")
#: Seconds of clock difference tolerated on exp and nbf.
LEEWAY = 30


class InvalidToken(Exception):
    """The bearer token is not accepted; ``reason`` says why (for the 401's description)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


class UnknownKey(InvalidToken):
    """The token names a key id the set does not hold (the caller may refetch the set once)."""


def header_of(token: str) -> dict:
    """The token's header, checked for an accepted algorithm. Raises InvalidToken."""
    try:
        header = jwt.get_unverified_header(token)
    except jwt.PyJWTError:
        raise InvalidToken("not a JWT") from None
    alg = header.get("alg")
    if alg not in ALGORITHMS:
        raise InvalidToken(f"the algorithm {alg!r} is not accepted")
    return header


def verify(token: str, header: dict, key: SigningKey | None, *, issuer: str, audience: str) -> dict:
    """The token's claims, verified with ``key`` (the JWKS key its header's kid names, None
    when there is none). Raises InvalidToken (UnknownKey when ``key`` is None)."""
    alg = header["alg"]
    if key is None:
        raise UnknownKey(f"no signing key {header.get('kid')!r} at the issuer")
    if key.jwk.key_type != KEY_TYPES[alg[:2]] or (key.alg or alg) != alg:
        raise InvalidToken(f"the key {header.get('kid')!r} is not a {alg} key")
    try:
        claims = jwt.decode(
            token, key.jwk.key, algorithms=[alg], audience=audience, issuer=issuer, leeway=LEEWAY,
            options={"require": ["exp", "iss", "aud", "sub"], "verify_signature": True},
        )
    except jwt.ExpiredSignatureError:
        raise InvalidToken("the token has expired") from None
    except jwt.ImmatureSignatureError:
        raise InvalidToken("the token is not valid yet (nbf)") from None
    except jwt.InvalidIssuerError:
        raise InvalidToken("the token is from another issuer") from None
    except jwt.InvalidAudienceError:
        raise InvalidToken("the token is not for this audience") from None
    except jwt.MissingRequiredClaimError as e:
        raise InvalidToken(f"the token has no {e.claim!r} claim") from None
    except jwt.InvalidSignatureError:
        raise InvalidToken("the signature does not verify") from None
    except jwt.PyJWTError as e:
        raise InvalidToken(f"the token is not valid ({type(e).__name__})") from None
    if not isinstance(claims.get("sub"), str) or not claims["sub"]:
        raise InvalidToken("the token's sub is not a string")
    return claims


def verify_with(keys: KeySet, token: str, *, issuer: str, audience: str) -> dict:
    """verify(), looking the key up in ``keys`` and refetching once on an unknown kid
    (blocking; the API's dependency does the cached lookup on the event loop itself)."""
    header = header_of(token)
    return verify(token, header, keys.get(header.get("kid")), issuer=issuer, audience=audience)
