"""Stage 1, the model: load and prepare it (opsets, BatchNorm folding), models over 1 GiB, graph views and rewrites, atomic files."""
