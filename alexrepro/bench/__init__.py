"""Benchmarks: our data path beside a plain baseline on this machine."""
