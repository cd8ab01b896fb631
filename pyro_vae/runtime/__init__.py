"""Runtime: the processes a job runs in (torchrun's process group and its collectives), below training and evaluation."""
