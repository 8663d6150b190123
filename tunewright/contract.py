"""What a job asks for and what it leaves behind, shared by the trainer server and its
workers. Kept free of torch so the server starts without loading it."""

from __future__ import annotations

from dataclasses import dataclass

# The artifact folder a succeeded job publishes, and the files in it.
ARTIFACT = "artifact"
MANIFEST = "manifest.json"
PREDICTIONS = "eval_predictions.jsonl"
ADAPTER = "adapter"


@dataclass(frozen=True)
class Hyperparameters:
    epochs: int = 2
    batch_size: int = 8
    learning_rate: float = 1e-3
    max_seq_length: int = 512
    seed: int = 0
    max_steps: int = 0
    evaluate: bool = True
    eval_max_new_tokens: int = 48
