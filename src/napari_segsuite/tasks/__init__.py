"""What each task means, independent of the model: targets, loss, post-processing, metrics."""
