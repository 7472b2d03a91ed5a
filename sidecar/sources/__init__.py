"""Where web-identity tokens come from: one protocol, a registry of kinds."""
