"""Pinned environments: the hash-locked files, the environments made from them and their
records, and where pip finds the torch build a lock pins."""
