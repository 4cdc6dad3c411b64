"""Training a run: the train stage's trainer (SFT and preference), its callbacks, the Unsloth
backend, and several processes (distributed helpers and their launcher)."""
