"""BitNet b1.58: checkpoints, conversion, the bitnet.cpp engine, the kernel benchmark."""
