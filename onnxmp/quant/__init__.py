"""Stages 2-4, the quantizers: the NumPy quantization math, candidates, quantizer groups, calibrated ranges, parameters, cost."""
