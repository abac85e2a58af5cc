"""The app's own Prometheus metrics, beside Serve's built-in ones (request counts, latencies, queue
lengths, replicas). Ray exports both on every node's metrics port with a ``ray_`` prefix and the
``deployment``, ``replica`` and ``application`` tags; serve/README.md lists them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import contextmanager

# Milliseconds: a retrieval over 10^5 items is a few ms, an LLM re-rank of 50 candidates seconds on CPU.
LATENCY_BOUNDARIES_MS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 30000, 60000]


class ServingMetrics:
    """Counters and latency histograms of one replica (created inside it: Serve adds its tags)."""

    def __init__(self) -> None:
        from ray.serve.metrics import Counter, Histogram

        self.retrieved = Counter("atflrec_retrieved_items", description="items the retrieval stage shortlisted")
        self.scored = Counter("atflrec_scored_candidates", tag_keys=("endpoint",),
                              description="candidates the LLM scored (score: every candidate; recommend: the "
                                          "re-ranked shortlist)")
        self.prefixes = Counter("atflrec_scored_queries", tag_keys=("endpoint",),
                                description="histories scored: each runs its shared prompt prefix once per adapter, "
                                            "so scored_candidates / scored_queries is the prefix reuse")
        self.batch_queries = Histogram("atflrec_batch_queries", boundaries=[1, 2, 4, 8, 16, 32],
                                       description="queries per model call (Serve's request batching at work)")
        self.latency = Histogram("atflrec_stage_latency_ms", boundaries=LATENCY_BOUNDARIES_MS, tag_keys=("stage",),
                                 description="time in one stage of a request: retrieval, or the LLM's rerank "
                                             "(recommend) and score (score), batching wait included")

    @contextmanager
    def timed(self, stage: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.latency.observe((time.perf_counter() - start) * 1000, tags={"stage": stage})
