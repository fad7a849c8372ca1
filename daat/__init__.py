"""daat: Depth-Aware Adversarial Training for robust image classification."""
__version__ = "0.1.0"
