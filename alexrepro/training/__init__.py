"""Training (§5): plan → run (build, resume) → loop (epochs, validation, checkpoints) → step, with the
optimiser, schedule, checkpoint format, random state, watchdogs, reporter and run log beside them."""
