"""Data: the procedural concept world (the embedded default) and batching helpers."""

from pyconcepts.data.batches import iter_batches
from pyconcepts.data.concept_world import CONCEPTS, ConceptWorld, train_test

__all__ = ["CONCEPTS", "ConceptWorld", "iter_batches", "train_test"]
