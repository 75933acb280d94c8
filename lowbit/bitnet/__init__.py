"""BitNet b1.58: checkpoints, conversion, the bitnet.cpp engine, the kernel benchmark."""

# BitNet models are small (2B4T is 0.8 GB as TQ2_0), so the kit's own llama.cpp tools load them into memory instead
# of mapping the file. Loaded, the weights sit in the CPU backend's buffer, which patch 0010 backs with 2 MiB pages;
# a file mapping gets 4 KiB pages, and decode, which streams every weight once per token, ran ~20 % slower from it
# (docs/bitnet.md, patch 0010). bitnet.cpp's tools are left as they are.
LOAD_FLAGS = ("-lm", "none")
