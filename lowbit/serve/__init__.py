"""Serving a model to a room: the OpenAI-compatible server and its load test."""
