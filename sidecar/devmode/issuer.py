"""A minimal OIDC issuer: one RSA key, RS256 tokens, discovery and JWKS documents."""

from __future__ import annotations

import json
import secrets
import time
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey

DEFAULT_AUDIENCE = "sts.amazonaws.com"


class OidcIssuer:
    def __init__(self, issuer_url: str) -> None:
        self.url = issuer_url.rstrip("/")
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.kid = secrets.token_hex(8)

    def __repr__(self) -> str:
        return f"OidcIssuer({self.url!r}, kid={self.kid!r})"

    @property
    def public_key(self) -> RSAPublicKey:
        return self._key.public_key()

    def mint(
        self,
        subject: str = "system:serviceaccount:default:dev",
        audience: str | list[str] = DEFAULT_AUDIENCE,
        ttl: float = 3600,
        now: float | None = None,
        **claims: Any,
    ) -> str:
        issued = int(now if now is not None else time.time())
        payload = {
            "iss": self.url,
            "sub": subject,
            "aud": audience,
            "iat": issued,
            "nbf": issued,
            "exp": int(issued + ttl),
            **claims,
        }
        return jwt.encode(payload, self._key, algorithm="RS256", headers={"kid": self.kid})

    def jwks(self) -> dict[str, Any]:
        jwk: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(self.public_key))
        jwk.update({"kid": self.kid, "use": "sig", "alg": "RS256"})
        return {"keys": [jwk]}

    def discovery(self) -> dict[str, Any]:
        return {
            "issuer": self.url,
            "jwks_uri": f"{self.url}/keys",
            "response_types_supported": ["id_token"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
        }
