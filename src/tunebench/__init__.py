"""tunebench: a reproducible experiment harness for LLM fine-tuning."""
