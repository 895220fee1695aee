"""Training (§5): options → plan (plan.py) → the run built or resumed (build.py) → the loop (loop.py: epochs,
validation, checkpoints) → the step (step.py), with the optimiser, schedule, checkpoints, random state,
watchdogs, the run folder and its records (run_folder.py) and the reporter beside them."""
