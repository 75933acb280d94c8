"""Running models: quality measurements of quantized forms (and, later, plan, engine, bench, generation)."""
