"""Who may have which identity: static auth tokens, or verified pod tokens and associations."""
