"""Storage: a run folder (what it may hold, made and checked), checkpoints, the one atomic writer, the lock, history.csv."""
