"""Hyperparameter search with Ray Tune: spaces (shipped as ``tune/NAME``, :mod:`.space`), trials as
Ray Train runs (:mod:`.trial`), the search and its resume (:mod:`.search`, ``run_search``),
results, pruning and best/ (:mod:`.results`), plots (:mod:`.plots`)."""
