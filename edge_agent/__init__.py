"""The edge agent: trains locally, serves with onnxruntime, publishes signed updates."""
