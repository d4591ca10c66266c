"""Stage 5, AdaRound: each weighted layer's learned rounding per weight bit-width, from its captured inputs."""
