"""Result caching: cache policies, cache keys and the LMDB result store."""
