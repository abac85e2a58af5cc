"""Running the pipeline on a Ray cluster: job submission through the Ray Jobs API (:mod:`.jobs`)."""
