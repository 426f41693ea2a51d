"""What the training stages share: optimizer and schedule, the checkpointed train state,
step logging, and token log-probabilities. Stage files hold only their own loop body."""
