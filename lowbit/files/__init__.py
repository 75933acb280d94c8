"""GGUF files: the bounded header reader, tensor layout, shard sets."""
