"""Lesson helpers by concern: side-by-side comparisons of models on the seeds' prompts."""
