"""The data path up to the prepared set: sources, imaging, prep, the shard format, statistics, info, synth."""
