"""Instruction samples: built from a dataset (:mod:`.build`) or imported from TALLRec's instruction
files (:mod:`.instructions`), stored in the sample format (:mod:`.format`)."""

from atflrec.samples.build import SampleConfig, build_samples, make_samples
from atflrec.samples.format import META_FILE, SAMPLE_SCHEMA, SPLITS, SampleError, few_shot, read_samples, write_samples

__all__ = ["META_FILE", "SAMPLE_SCHEMA", "SPLITS", "SampleConfig", "SampleError", "build_samples", "few_shot",
           "make_samples", "read_samples", "write_samples"]
