"""Building llama.cpp and its bindings, ggml's kernels through ctypes, the Jupyter kernel."""
