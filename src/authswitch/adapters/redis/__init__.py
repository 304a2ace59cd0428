"""Redis: the cache of balances and card state that decisions change atomically."""
