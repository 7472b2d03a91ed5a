"""Keeping credentials fresh: one refresher per identity, and the pool that holds them."""
