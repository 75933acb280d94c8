"""Prompts: where a chat template from a model file is rendered, within limits."""
