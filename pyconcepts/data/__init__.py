"""Data: the procedural concept world (the embedded default) and batching helpers."""

from pyconcepts.data.batches import iter_batches
from pyconcepts.data.concept_folder import ConceptData, load_concept_folder, write_concept_folder
from pyconcepts.data.concept_world import CONCEPTS, ConceptWorld, train_test

__all__ = [
    "CONCEPTS", "ConceptData", "ConceptWorld", "iter_batches", "load_concept_folder",
    "train_test", "write_concept_folder",
]  # fmt: skip
