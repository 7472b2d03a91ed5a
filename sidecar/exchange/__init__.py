"""Turning a web-identity token into credentials: the STS client, role chains, diagnosis."""
