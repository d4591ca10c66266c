"""Running things: onnxruntime sessions, calibration data, worker processes and Ray, the results cache."""
