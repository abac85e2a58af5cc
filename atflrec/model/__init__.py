"""The ATFLRec model: prompts with audio placeholders, audio encoder, LoRA adapters, fusion, scores.

Public surface: :class:`ModelConfig`, :class:`ATFLRecModel`, :class:`Collator`/:class:`Batch`,
:func:`save_artifact`/:func:`load_artifact`. Import submodules directly for the parts.
"""

from atflrec.model.artifact import load_artifact, save_artifact
from atflrec.model.batch import Batch, Collator
from atflrec.model.network import ATFLRecModel, ModelConfig

__all__ = ["ATFLRecModel", "Batch", "Collator", "ModelConfig", "load_artifact", "save_artifact"]
