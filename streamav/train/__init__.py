"""Training: the shared loop, the four stages, and the data they read."""
