"""How a process and its files behave when things go wrong (docs/RELIABILITY.md): stop signals (signals.py),
one process at a time in a folder (locking.py), workers that end with their parent (lifetime.py), writes
that leave no half file (atomic.py). These import nothing above them; every stage may use them."""
