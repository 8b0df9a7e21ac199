"""w2sdefense: poison, fine-tune, defend (weak-to-strong unlearning) and measure LM classifiers."""

__version__ = "0.1.0"
