"""What a node tells SMART apps about itself: ``.well-known/smart-configuration`` (SMART App
Launch 2.2, section 2.0.7), the CapabilityStatement's ``rest.security``, and the OpenID
Connect discovery document. Only what the server really does is listed."""

from __future__ import annotations

from typing import Any

from careledger.smart.oauth import ASSERTION_ALGS

OAUTH_URIS = "http://fhir-registry.smarthealthit.org/StructureDefinition/oauth-uris"
CAPABILITIES = (
    "launch-ehr",
    "launch-standalone",
    "client-public",
    "client-confidential-symmetric",
    "client-confidential-asymmetric",
    "context-ehr-patient",
    "context-standalone-patient",
    "context-banner",
    "sso-openid-connect",
    "permission-offline",
    "permission-online",
    "permission-patient",
    "permission-user",
    "permission-v1",
    "permission-v2",
)
SCOPES_SUPPORTED = (
    "openid",
    "fhirUser",
    "launch",
    "launch/patient",
    "offline_access",
    "online_access",
    "patient/*.rs",
    "patient/*.cruds",
    "user/*.rs",
    "user/*.cruds",
    "system/*.rs",
    "patient/*.read",
    "user/*.read",
    "user/*.write",
    "system/*.read",
)


def endpoints(origin: str) -> dict[str, str]:
    return {
        "authorize": f"{origin}/auth/authorize",
        "token": f"{origin}/auth/token",
        "introspect": f"{origin}/auth/introspect",
        "revoke": f"{origin}/auth/revoke",
        "jwks": f"{origin}/.well-known/jwks.json",
        "manage": f"{origin}/me/apps",
    }


def smart_configuration(origin: str) -> dict[str, Any]:
    urls = endpoints(origin)
    return {
        "issuer": origin,
        "jwks_uri": urls["jwks"],
        "authorization_endpoint": urls["authorize"],
        "token_endpoint": urls["token"],
        "introspection_endpoint": urls["introspect"],
        "revocation_endpoint": urls["revoke"],
        "management_endpoint": urls["manage"],
        "grant_types_supported": ["authorization_code", "refresh_token", "client_credentials"],
        "token_endpoint_auth_methods_supported": [
            "private_key_jwt",
            "client_secret_basic",
            "client_secret_post",
            "none",
        ],
        "token_endpoint_auth_signing_alg_values_supported": list(ASSERTION_ALGS),
        "response_types_supported": ["code"],
        "code_challenge_methods_supported": ["S256"],
        "scopes_supported": list(SCOPES_SUPPORTED),
        "capabilities": list(CAPABILITIES),
    }


def openid_configuration(origin: str) -> dict[str, Any]:
    urls = endpoints(origin)
    return {
        "issuer": origin,
        "authorization_endpoint": urls["authorize"],
        "token_endpoint": urls["token"],
        "jwks_uri": urls["jwks"],
        "response_types_supported": ["code"],
        "subject_types_supported": ["public"],
        "id_token_signing_alg_values_supported": ["RS256"],
        "scopes_supported": ["openid", "fhirUser"],
        "claims_supported": ["iss", "sub", "aud", "exp", "iat", "fhirUser", "nonce"],
        "code_challenge_methods_supported": ["S256"],
    }


def capability_security(origin: str) -> dict[str, Any]:
    """``CapabilityStatement.rest.security`` as SMART App Launch 2.2 (section 2.0.6) has it."""
    urls = endpoints(origin)
    return {
        "extension": [
            {
                "url": OAUTH_URIS,
                "extension": [
                    {"url": "authorize", "valueUri": urls["authorize"]},
                    {"url": "token", "valueUri": urls["token"]},
                    {"url": "introspect", "valueUri": urls["introspect"]},
                    {"url": "revoke", "valueUri": urls["revoke"]},
                    {"url": "manage", "valueUri": urls["manage"]},
                ],
            }
        ],
        "cors": True,
        "service": [
            {
                "coding": [
                    {
                        "system": "http://terminology.hl7.org/CodeSystem/restful-security-service",
                        "code": "SMART-on-FHIR",
                    }
                ],
                "text": "OAuth2 using SMART-on-FHIR profile (see http://docs.smarthealthit.org)",
            }
        ],
        "description": (
            "SMART App Launch 2.2 (authorization code with PKCE, EHR and standalone launch) "
            "and SMART Backend Services (client_credentials with private_key_jwt); apps are "
            "registered on the ledger. Scopes are an upper bound: the ledger's consent "
            "decides each access. CareLedger's own members may also sign a challenge "
            "(/v1/auth/token)."
        ),
    }
