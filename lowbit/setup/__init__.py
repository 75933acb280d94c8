"""Setting up the kit's environment (`invoke setup`) and checking it (`invoke doctor`)."""
