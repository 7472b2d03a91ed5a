"""credential-sidecar: OIDC token -> STS -> fresh AWS credentials on an ECS-style endpoint."""

__version__ = "0.1.0"
