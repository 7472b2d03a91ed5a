"""Dev mode: everything needed to see the whole flow on one machine, no AWS account.

* ``issuer``: an OIDC issuer that mints RS256 tokens and publishes its JWKS;
* ``token_writer``: writes tokens the way the kubelet does (atomic ``..data`` swap);
* ``sts_emulator``: STS's Query/XML API (AssumeRoleWithWebIdentity, AssumeRole,
  GetCallerIdentity) that verifies tokens and SigV4 signatures, with fault injection;
* ``environment``: wires them together for ``credential-sidecar serve --dev``.

The tests use the same pieces as their fault-injecting STS peer.
"""
