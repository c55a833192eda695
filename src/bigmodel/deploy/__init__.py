"""Taking a trained model out of bigmodel: ONNX export and batch prediction."""
