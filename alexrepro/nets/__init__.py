"""The nets: the paper's AlexNet (§3), its LRN (§3.3), summaries, and the registry of nets by name."""
