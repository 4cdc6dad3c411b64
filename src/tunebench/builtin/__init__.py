"""Built-in tiny models, tokenizer and synthetic tasks, so the whole pipeline runs offline."""
