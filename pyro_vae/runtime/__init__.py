"""Runtime: the processes a job runs in (torchrun's process group and its collectives), device memory and torch's thread count, below training and evaluation."""
