"""Models: the catalog, real models and fetching them (the Hub, its cache, mirrors)."""
