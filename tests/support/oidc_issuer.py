"""A local OIDC issuer for the token tests: its own RSA and EC keys (cryptography), a
discovery document and a JWKS served on loopback by a small HTTP server on a free port, and
a signer of tokens with any claims and header. Counts the JWKS fetches; ``stop()`` takes it
down (connections refused) and ``start()`` brings it back on the same port.

    issuer = LocalIssuer().start()
    token = issuer.sign({"sub": "u1", "aud": "pipeq"})      # RS256 with the published key
    issuer.jwks_fetches                                     # how often the JWKS was read
"""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import jwt
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from pipeq.redis_server import free_port


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


class LocalIssuer:
    def __init__(self, audience: str = "pipeq-api"):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/realms/lab"
        self.audience = audience
        self.rsa = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.ec = ec.generate_private_key(ec.SECP256R1())
        #: kid → private key; published ones are in ``published``
        self.private = {"rsa-1": self.rsa, "ec-1": self.ec}
        self.published = {"rsa-1": "RS256", "ec-1": "ES256"}
        self.extra_jwks: list[dict] = []  # raw JWKs added as they are (an "oct" key, ...)
        self.discovery_issuer: str | None = None  # what the discovery document claims (default: url)
        self.jwks_fetches = 0
        self.httpd: ThreadingHTTPServer | None = None

    # -- keys ----------------------------------------------------------------------------------

    def new_key(self, kid: str, *, publish: bool) -> str:
        self.private[kid] = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        if publish:
            self.published[kid] = "RS256"
        return kid

    def jwks(self) -> dict:
        keys = []
        for kid, alg in self.published.items():
            jwk = json.loads(jwt.algorithms.get_default_algorithms()[alg].to_jwk(self.private[kid].public_key()))
            keys.append({**jwk, "kid": kid, "alg": alg, "use": "sig"})
        return {"keys": keys + self.extra_jwks}

    def public_pem(self, kid: str = "rsa-1") -> bytes:
        from cryptography.hazmat.primitives import serialization

        return self.private[kid].public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)

    # -- tokens --------------------------------------------------------------------------------

    def claims(self, **extra) -> dict:
        now = int(time.time())
        base = {"iss": self.url, "aud": self.audience, "sub": str(uuid.uuid4()), "iat": now, "exp": now + 300,
                "preferred_username": "ada", "groups": ["lab-a"]}
        base.update(extra)
        return {k: v for k, v in base.items() if v is not None}

    def sign(self, claims: dict | None = None, *, kid: str = "rsa-1", alg: str | None = None, **extra) -> str:
        alg = alg or ("ES256" if kid.startswith("ec") else "RS256")
        return jwt.encode(claims if claims is not None else self.claims(**extra), self.private[kid], algorithm=alg,
                          headers={"kid": kid})

    @staticmethod
    def unsigned(claims: dict, header: dict) -> str:
        """A token with this header and no signature (``alg: none``)."""
        return f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}."

    @staticmethod
    def hmac_signed(claims: dict, header: dict, secret: bytes) -> str:
        """HS256 over header and claims with ``secret`` (PyJWT refuses to make such a token
        with a PEM public key as the secret; an attacker would not)."""
        import hashlib
        import hmac

        signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(claims).encode())}"
        return f"{signing_input}.{b64(hmac.new(secret, signing_input.encode(), hashlib.sha256).digest())}"

    # -- the server ----------------------------------------------------------------------------

    def start(self) -> LocalIssuer:
        issuer = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                if self.path == "/realms/lab/.well-known/openid-configuration":
                    body = {"issuer": issuer.discovery_issuer or issuer.url, "jwks_uri": issuer.url + "/certs"}
                elif self.path == "/realms/lab/certs":
                    issuer.jwks_fetches += 1
                    body = issuer.jwks()
                else:
                    self.send_error(404)
                    return
                data = json.dumps(body).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.httpd.serve_forever, name="local-issuer", daemon=True).start()
        return self

    def stop(self) -> None:
        if self.httpd is not None:
            self.httpd.shutdown()
            self.httpd.server_close()
            self.httpd = None
