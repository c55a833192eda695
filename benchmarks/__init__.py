"""bigmodel against the seed's plain loop, PyTorch Lightning and the Hugging Face Trainer (README.md)."""
