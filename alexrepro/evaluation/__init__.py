"""Evaluation (§4.1, §6): test-time views, ensembles, top-k error, the paper's tables, predict."""
