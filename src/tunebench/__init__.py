"""tunebench: a reproducible experiment harness for LLM fine-tuning."""

__version__ = "0.1.0"
