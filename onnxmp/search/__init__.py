"""Stages 6-7, the search: simulator, partial re-evaluation, Phase 1, Pareto curve and budget choice, accuracy targets, evaluators."""
