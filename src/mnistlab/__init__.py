"""mnistlab: the TensorFlow MNIST tutorials made real, in PyTorch."""

__version__ = "0.1.0"
