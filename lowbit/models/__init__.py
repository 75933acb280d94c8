"""Models by concern: the catalog's real offline models and how they are fetched."""
