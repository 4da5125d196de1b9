"""Build-time tools: turn components into optimized artifacts (eager | compile | onnx | tensorrt, per precision),
with FP8 calibration, ONNX Q/DQ, TensorRT and the accuracy gate. `engine/` never imports this package."""
