"""Running models and judging what they produce: limited subprocesses, answer checkers."""
