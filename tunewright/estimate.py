"""What a job will take, before it starts: peak memory, seconds per step and for the whole
job, from the base model's config and the dataset's token statistics.

Nothing is loaded and torch is not imported, so an estimate takes milliseconds. It is
arithmetic on three things:

- the model's shape (``ModelShape``, from config.json): how many weights, in which layers;
- what the method does with them (``Footprint``, from the method's ``footprint`` hook):
  how many it trains, how many bytes the frozen ones take, whether activations are
  recomputed;
- the data (``DataShape``, from the dataset's statistics): how many examples, how long, so
  how many tokens the largest pass holds and how many a step computes.

Memory follows where a training worker's memory goes, measured by ``bench/memory.py``: the
imported libraries, the weights, AdamW's two moments of the trained parameters, and the
activations autograd keeps for the largest pass (about twice what it saves, counting the
backward pass's own buffers), or the gradients where they are larger: the backward pass
writes them as it frees the activations. The coefficients below were fitted to
those measurements on this project's CI machine (2-core x86-64, float32) at the 135M and
360M sizes and checked at 1B; bench/README.md has the table of estimate against
measurement. Time is the passes' floating-point work over what this host's matrix products
reach (measured once, in about 0.1 s), plus a cost per layer and pass that dominates tiny
models.
"""

from __future__ import annotations

import functools
import math
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tunewright.contract import Hyperparameters
from tunewright.methods import Runtime, cpu_has_bf16

GIB = 2**30
FLOAT32 = 4

# Resident memory of a worker once it has imported torch, transformers and peft, before
# it loads a model (bench/memory.py's "imports" phase).
RUNTIME_BYTES = int(0.43 * GIB)
# Besides the weights: the allocator's slack and the buffers of loading them, which grow
# with the model (bench/memory.py: peak - imports - weights - activations, 135M to 1B).
OVERHEAD_BYTES = int(0.10 * GIB)
OVERHEAD_PER_WEIGHT_BYTE = 0.2
# Resident memory per byte autograd saves for the backward pass: the saved tensors, and the
# gradients and temporaries of the backward pass itself.
ACTIVATION_FACTOR = 1.6
# What one layer of a Llama-like decoder saves for backward, per token, in floats of
# hidden and intermediate size (norm inputs and outputs, q/k/v, attention output, the
# MLP's gate, up, activation and product), fitted with bench/memory.py at 135M and 360M.
SAVED_PER_HIDDEN = 5.8
SAVED_PER_INTERMEDIATE = 5.3
# Logits of one trained token, their log-softmax and its gradient.
LOGIT_COPIES = 3
# Share of this host's measured float32 matrix-product speed a training pass reaches, and
# the cost of one layer in one pass, forward and backward, that the matrix products leave
# out (norms, activations, rotary embeddings, Python): fitted with bench/memory.py at 135M,
# 360M and 1B. A step's own work (clipping, AdamW on small adapters, the batch): fitted on
# the tests' 2-layer model, where it is most of the time.
COMPUTE_EFFICIENCY = 0.7
SECONDS_PER_LAYER_PASS = 0.015
SECONDS_PER_STEP = 0.03
# With group_by_length, a pass pads its rows to about this much over their mean length.
GROUPED_PADDING = 1.08
# A bfloat16 step against a float32 one where the CPU or GPU computes bfloat16 natively
# (bench/README.md, "Training speed": 3.3x to 3.8x on an AVX512-BF16 CPU; not calibrated here).
BF16_SPEEDUP = 3.3


@dataclass(frozen=True)
class ModelShape:
    """The sizes of a decoder-only transformer, read from its config.json."""

    hidden: int
    intermediate: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    tied: bool

    @classmethod
    def from_config(cls, config: Mapping[str, Any]) -> ModelShape:
        """From a transformers config dict; a multimodal model's ``text_config`` is used
        when there is one. Raises ValueError naming the missing key."""
        config = config.get("text_config") or config

        def first(*keys: str, default: Any = None) -> Any:
            for key in keys:
                if config.get(key) is not None:
                    return config[key]
            if default is None:
                raise ValueError(f"config.json has none of {', '.join(keys)}")
            return default

        hidden = int(first("hidden_size", "n_embd", "d_model"))
        heads = int(first("num_attention_heads", "n_head"))
        return cls(
            hidden=hidden,
            intermediate=int(first("intermediate_size", "n_inner", "ffn_dim", default=4 * hidden)),
            layers=int(first("num_hidden_layers", "n_layer", "num_layers")),
            heads=heads,
            kv_heads=int(first("num_key_value_heads", default=heads)),
            head_dim=int(first("head_dim", default=hidden // heads)),
            vocab=int(first("vocab_size")),
            tied=bool(config.get("tie_word_embeddings", True)),
        )

    def linears(self) -> dict[str, tuple[int, int]]:
        """One layer's linear layers, by the usual (Llama) name: (inputs, outputs)."""
        q, kv, h, i = self.heads * self.head_dim, self.kv_heads * self.head_dim, self.hidden, self.intermediate
        return {
            "q_proj": (h, q),
            "k_proj": (h, kv),
            "v_proj": (h, kv),
            "o_proj": (q, h),
            "gate_proj": (h, i),
            "up_proj": (h, i),
            "down_proj": (i, h),
        }

    @property
    def linear_params(self) -> int:
        """Weights of every layer's linear layers: what a token's matrix products read."""
        return self.layers * sum(n * m for n, m in self.linears().values())

    @property
    def embedding_params(self) -> int:
        return self.vocab * self.hidden * (1 if self.tied else 2)

    @property
    def params(self) -> int:
        norms = (2 * self.layers + 1) * self.hidden
        return self.linear_params + self.embedding_params + norms

    def lora_params(self, r: int, targets: Sequence[str]) -> int:
        """Parameters of rank-``r`` LoRA on ``targets`` ("all-linear", Llama names, or a
        fused family's names, counted as the mean layer) in every layer."""
        linears = self.linears()
        if "all-linear" in targets:
            chosen = list(linears.values())
        else:
            mean = (sum(n for n, _ in linears.values()) // 7, sum(m for _, m in linears.values()) // 7)
            chosen = [linears.get(name, mean) for name in targets]
        return self.layers * sum(r * (n + m) for n, m in chosen)


@dataclass(frozen=True)
class Footprint:
    """What a method does with a model's weights, for the estimate (a method's
    ``footprint(shape, config)``)."""

    # Parameters trained: each has a gradient and AdamW's two moments besides itself, all
    # of ``trainable_width`` bytes.
    trainable: int
    # Bytes of the weights that stay frozen, as the method holds them while training.
    frozen_bytes: int
    # Activations are recomputed in the backward pass: one tensor a layer is kept instead.
    checkpointing: bool = False
    # Saved activations relative to LoRA on every linear layer (fitted per method).
    activation_scale: float = 1.0
    # Floating-point work of a pass relative to a frozen base with input gradients only:
    # 1.5 when every weight gets a gradient too (full fine-tuning).
    compute_scale: float = 1.0
    # Time a step takes relative to plain compute, for what the arithmetic count misses
    # (4-bit weights dequantized at every use).
    slowdown: float = 1.0
    # Positions the method puts before every example (a learned prefix).
    extra_positions: int = 0
    # Memory of libraries the method imports besides torch, transformers and peft.
    runtime_bytes: int = 0
    trainable_width: int = FLOAT32
    # Memory the method's own machinery holds while training, besides all the above.
    working_bytes: int = 0


@dataclass(frozen=True)
class DataShape:
    """Token statistics of a dataset's splits (the data service's ``DatasetStats``)."""

    train_examples: int
    mean_tokens: float
    max_tokens: int
    # Tokens the loss is on, per example on average.
    mean_loss_tokens: float
    validation_examples: int = 0
    validation_mean_tokens: float = 0.0
    test_examples: int = 0
    # (at most this many tokens, examples) of the training split, ascending.
    histogram: tuple[tuple[int, int], ...] = ()

    @classmethod
    def from_split_stats(cls, train: Any, validation: Any, test: Any) -> DataShape:
        """From the data service's ``SplitStats`` of each split (anything with its fields)."""
        return cls(
            train_examples=train.examples,
            mean_tokens=train.mean_tokens,
            max_tokens=train.max_tokens,
            mean_loss_tokens=train.loss_tokens / train.examples if train.examples else 0.0,
            validation_examples=validation.examples,
            validation_mean_tokens=validation.mean_tokens,
            test_examples=test.examples,
            histogram=tuple((b.max_tokens, b.examples) for b in train.length_histogram),
        )

    @classmethod
    def from_lengths(cls, lengths: Sequence[int], loss_lengths: Sequence[int]) -> DataShape:
        """A training split of examples of these token counts, the loss on ``loss_lengths``."""
        counts: dict[int, int] = {}
        for length in lengths:
            counts[length] = counts.get(length, 0) + 1
        return cls(
            train_examples=len(lengths),
            mean_tokens=sum(lengths) / len(lengths),
            max_tokens=max(lengths),
            mean_loss_tokens=sum(loss_lengths) / len(lengths),
            histogram=tuple(sorted(counts.items())),
        )


@dataclass
class Estimate:
    peak_bytes: int
    # Where the peak goes, in bytes, by part; it sums to peak_bytes.
    breakdown: dict[str, int]
    # Accelerator memory on CUDA (0 on a CPU): weights, trained state and activations.
    device_bytes: int
    seconds_per_step: float
    steps: int
    training_seconds: float
    # Training, validation, and the base-against-tuned evaluation.
    total_seconds: float
    # Rows and tokens of the largest forward and backward pass.
    largest_pass: tuple[int, int]
    tokens_per_second: float
    notes: list[str] = field(default_factory=list)


def host_runtime() -> Runtime:
    """Where this host's jobs train, without importing torch: on CUDA where an NVIDIA driver
    is loaded (taken to compute bfloat16, as GPUs since Ampere do), else on the CPU."""
    if Path("/proc/driver/nvidia/version").exists():
        return Runtime("cuda", bf16=True)
    return Runtime("cpu", bf16=cpu_has_bf16())


@functools.cache
def host_flops() -> float:
    """Float32 multiply-adds per second (counted as two operations) that this host's matrix
    products reach on all its cores, measured once per process."""
    import numpy as np

    size = 1024
    rng = np.random.default_rng(0)
    a, b = rng.random((size, size), dtype=np.float32), rng.random((size, size), dtype=np.float32)
    a @ b  # first call: threads start, pages are touched
    best = math.inf  # the best of several: a busy moment only makes one slower
    for _ in range(8):
        start = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - start)
    return 2 * size**3 / best


def expected_max(histogram: Sequence[tuple[int, int]], draws: int, fallback: int) -> float:
    """The expected longest of ``draws`` examples drawn at random, from a length histogram
    (each bucket taken at its upper bound)."""
    total = sum(count for _, count in histogram)
    if not total:
        return float(fallback)
    expected, below = 0.0, 0
    for bound, count in histogram:
        # P(max <= bound) - P(max <= previous bound)
        expected += bound * (((below + count) / total) ** draws - (below / total) ** draws)
        below += count
    return expected


def estimate(
    shape: ModelShape,
    footprint: Footprint,
    data: DataShape,
    settings: Hyperparameters,
    runtime: Runtime,
    flops: float | None = None,
) -> Estimate:
    """The estimate for training ``shape`` as ``footprint`` says on ``data`` with ``settings``
    on ``runtime``; ``flops`` is this host's (``host_flops()`` when not given)."""
    notes = []
    on_gpu = runtime.device == "cuda"
    bf16 = settings.precision == "bf16" or (settings.precision == "auto" and runtime.bf16)
    if bf16:
        notes.append("bfloat16 passes: estimated, not calibrated (the calibration host computes in float32)")

    # The largest pass: the longest examples, as many as a pass takes (per process). A
    # prefix's positions are keys and values only: no layer computes on them.
    per_pass = settings.micro_batch_size or math.ceil(settings.batch_size / settings.processes)
    longest = min(data.max_tokens, settings.max_seq_length)
    if settings.packing:
        largest = (1, int(min(per_pass * longest, per_pass * data.mean_tokens * 1.5)))
    else:
        largest = (per_pass, longest)
    largest_tokens = largest[0] * largest[1]

    # Memory: runtime, weights, trained state, and what the largest pass keeps for backward.
    weights = footprint.frozen_bytes + footprint.trainable * footprint.trainable_width
    if bf16 and footprint.frozen_bytes >= shape.linear_params * FLOAT32:
        weights += shape.linear_params * 2  # frozen linear weights copied to bfloat16 while training
    optimizer_state = footprint.trainable * footprint.trainable_width * 2  # AdamW's two moments
    gradients = footprint.trainable * footprint.trainable_width
    per_token_layer = (SAVED_PER_HIDDEN * shape.hidden + SAVED_PER_INTERMEDIATE * shape.intermediate) * FLOAT32
    if bf16:
        per_token_layer *= 0.6  # matrix products' inputs kept in bfloat16, norms in float32
    checkpointing = footprint.checkpointing or settings.gradient_checkpointing == "on"
    if checkpointing:
        # Each layer's input is kept, and one layer's activations at a time in backward.
        saved = largest_tokens * (shape.layers * shape.hidden * FLOAT32 + per_token_layer)
    else:
        saved = largest_tokens * shape.layers * per_token_layer * footprint.activation_scale
    trained_in_pass = largest[0] * min(data.mean_loss_tokens * 1.5, longest)
    passes = math.ceil(settings.batch_size / per_pass / settings.processes)
    breakdown = {
        "runtime": RUNTIME_BYTES + footprint.runtime_bytes,
        "weights": weights,
        "optimizer state": optimizer_state,
        # One pass's backward writes the gradients as it frees the activations, into memory
        # the allocator kept: the larger of the two is what the peak holds. Over several
        # passes the gradients, accumulating, stay while the next pass's activations live.
        "activations and gradients": (
            max(int(saved * ACTIVATION_FACTOR), gradients)
            if passes == 1
            else int(saved * ACTIVATION_FACTOR) + gradients
        ),
        "logits": int(trained_in_pass * shape.vocab * FLOAT32 * LOGIT_COPIES),
        "allocator and loading": OVERHEAD_BYTES + int(OVERHEAD_PER_WEIGHT_BYTE * weights),
        "the method's own": footprint.working_bytes,
    }
    if settings.processes > 1 and not on_gpu:
        # Every process of a job holds its own copy of all of it.
        breakdown = {part: size * settings.processes for part, size in breakdown.items()}
    device = 0
    if on_gpu:
        # The host keeps the runtime and the loading buffers; the device holds the rest.
        on_device = ("weights", "optimizer state", "activations and gradients", "logits")
        device = sum(breakdown[part] for part in on_device)
        for part in on_device:
            breakdown[part] = 0
        notes.append("CUDA memory and time are estimated, not calibrated (the calibration host has no GPU)")

    # Time: a step's floating-point work over what this host's matrix products reach.
    steps = math.ceil(data.train_examples / settings.batch_size) * settings.epochs
    if settings.max_steps:
        steps = min(steps, settings.max_steps)
    if settings.packing:
        step_tokens = settings.batch_size * min(data.mean_tokens, settings.max_seq_length)
    else:
        if settings.group_by_length:
            padded = data.mean_tokens * GROUPED_PADDING
        else:
            padded = expected_max(data.histogram, per_pass, data.max_tokens)
        step_tokens = settings.batch_size * min(padded, settings.max_seq_length)
    # QK^T and AV, a token, over the row and a prefix's positions.
    keys = step_tokens / settings.batch_size + footprint.extra_positions
    attention = 4 * keys * shape.heads * shape.head_dim * shape.layers
    forward_per_token = 2 * shape.linear_params + attention
    trained_per_step = settings.batch_size * min(data.mean_loss_tokens, settings.max_seq_length)
    head = 4 * shape.hidden * shape.vocab * trained_per_step  # logits and their input gradient
    # Backward costs the forward pass again for the inputs' gradients (and again for the
    # weights' where every weight trains: compute_scale), and once more when recomputing.
    work = (2 * forward_per_token * step_tokens + head) * footprint.compute_scale
    if checkpointing:
        work += forward_per_token * step_tokens
    rate = (flops or host_flops()) * COMPUTE_EFFICIENCY * (BF16_SPEEDUP if bf16 else 1.0)
    if on_gpu:
        rate *= settings.processes  # a GPU each; on a CPU they share its cores
    overhead = SECONDS_PER_STEP + passes * shape.layers * SECONDS_PER_LAYER_PASS
    seconds_per_step = (work / rate + overhead) * footprint.slowdown
    training_seconds = steps * seconds_per_step
    # A validation pass (forward only) at every epoch's end, and the evaluation: the base and
    # the tuned model answer every test example, all in one batch, a token at a time.
    validation = settings.epochs * data.validation_examples * data.validation_mean_tokens * forward_per_token / rate
    evaluation = 0.0
    if settings.evaluate and data.test_examples:
        per_token = 2 * shape.linear_params * data.test_examples / rate + shape.layers * SECONDS_PER_LAYER_PASS / 2
        evaluation = 2 * settings.eval_max_new_tokens * per_token
    return Estimate(
        peak_bytes=sum(breakdown.values()),
        breakdown=breakdown,
        device_bytes=device,
        seconds_per_step=seconds_per_step,
        steps=steps,
        training_seconds=training_seconds,
        total_seconds=training_seconds + validation + evaluation,
        largest_pass=largest,
        # As a job reports it: the examples' own tokens, padding left out.
        tokens_per_second=settings.batch_size * min(data.mean_tokens, settings.max_seq_length) / seconds_per_step,
        notes=notes,
    )
