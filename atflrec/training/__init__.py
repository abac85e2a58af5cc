"""Training: the single-process loop (``local``) that the Ray Train workers reuse."""
