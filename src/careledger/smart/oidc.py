"""The node's OpenID Connect signing key: id_tokens are RS256, as OpenID Connect requires every
relying party to accept. The key is made once per node, kept owner-only in its directory and
published (public part only) at ``/.well-known/jwks.json``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPrivateKey

from careledger.core.keys import b64url_encode

OIDC_KEY_FILE = "oidc-rs256.pem"


class OidcKey:
    def __init__(self, private: RSAPrivateKey) -> None:
        self._private = private
        public = private.public_key()
        jwk: dict[str, Any] = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(public))
        digest = jwt.utils.base64url_decode(jwk["n"])[:12]
        self.kid = b64url_encode(digest)
        self.jwk = {**jwk, "kid": self.kid, "alg": "RS256", "use": "sig"}

    @classmethod
    def for_node(cls, data_dir: Path) -> OidcKey:
        """The node's key, made on first use (owner-only, written whole or not at all)."""
        path = data_dir / OIDC_KEY_FILE
        if path.exists():
            loaded = serialization.load_pem_private_key(path.read_bytes(), password=None)
            if not isinstance(loaded, RSAPrivateKey):
                raise ValueError(f"{path} does not hold an RSA key")
            return cls(loaded)
        private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        pem = private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        partial = path.with_suffix(".tmp")
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as out:
            out.write(pem)
            out.flush()
            os.fsync(out.fileno())
        os.replace(partial, path)
        return cls(private)

    def sign(self, claims: dict[str, Any]) -> str:
        return jwt.encode(claims, self._private, algorithm="RS256", headers={"kid": self.kid})

    def public_jwks(self) -> dict[str, Any]:
        return {"keys": [self.jwk]}
