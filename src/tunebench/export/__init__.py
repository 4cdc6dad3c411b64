"""Exporting a finished run: merged, converted to GGUF, with an Ollama Modelfile, checked."""
