"""Runtime: the processes a job runs in (torchrun's process group and its collectives) and device memory, below training and evaluation."""
