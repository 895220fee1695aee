"""Training (§5): the plan, the loop, the step, the optimiser, the schedule, checkpoints, watchdogs, the run log."""
