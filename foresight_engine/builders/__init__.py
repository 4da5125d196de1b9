"""Build-time tools: turn components into optimized artifacts (FP8 calibration, ONNX Q/DQ, TensorRT, accuracy gate)."""
