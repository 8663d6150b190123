"""The training loop and the base-against-tuned evaluation. Plain PyTorch, no gRPC.

Methods only decide what is trainable (``Method.prepare``); batching, the optimizer,
the schedule, progress reports and evaluation are the same for every method.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import math
import random
import resource
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass
from typing import Any

import torch

from tunewright.contract import Hyperparameters, Progress
from tunewright.core.chat import IGNORE_INDEX, TokenizedExample, end_of_turn_tokens, prompt_and_reference, render
from tunewright.methods import Runtime


def peak_memory_bytes(device: torch.device) -> int:
    """The worker's peak memory so far: PyTorch's allocations on a GPU, else the process's
    peak resident memory (Linux reports it in KiB)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device)
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def keep_freed_memory() -> bool:
    """Tells glibc's malloc to keep freed memory for reuse instead of giving it back to the
    system. By default every block over a few MiB (a step's logits, attention scores, MLP
    activations) is mapped fresh and unmapped when freed, so each training step pays page
    faults to zero the same memory again: on SmolLM2-135M that is a tenth of a LoRA step on
    this CPU (780 against 693 tokens/s). The process's memory then stays at its peak until
    it exits, which suits a worker that runs one job. Returns whether it took effect (only
    with glibc)."""
    library = ctypes.util.find_library("c")
    mallopt = getattr(ctypes.CDLL(library), "mallopt", None) if library else None
    if mallopt is None:
        return False
    m_trim_threshold, m_mmap_max = -1, -4  # from glibc's malloc.h
    return bool(mallopt(m_mmap_max, 0)) and bool(mallopt(m_trim_threshold, 2**31 - 1))


def device_of(model: Any) -> torch.device:
    return next(iter(model.parameters())).device


# How ``batch_inputs`` lays out a batch. Every layout gives the same loss; they differ in
# what they compute to get it.
RIGHT_PADDED = "right-padded"
LEFT_PADDED = "left-padded"
PACKED = "packed"


def batch_inputs(
    batch: list[TokenizedExample], pad_id: int, layout: str, device: torch.device | str = "cpu"
) -> tuple[dict[str, Any], torch.Tensor]:
    """The model inputs for ``batch`` in ``layout``, and the targets of the logits they
    produce: ``targets[..., i]`` is the token the i-th logit row must predict, or
    IGNORE_INDEX where nothing is trained.

    - ``left-padded``: every example ends in the last column, so the trained tokens (the
      assistant's answers, which come last) share the last columns, and the vocabulary
      projection runs only there (``logits_to_keep``). On SmolLM2 that projection is a fifth
      of the model's arithmetic, and on chat data the answers are about a fifth of the tokens.
      Position ids count from each example's first real token.
    - ``packed``: the examples one after another in a single row, with no padding at all.
      Position ids restart at each example, and from them transformers builds an attention
      mask that keeps each example to itself. The logits are computed only where the next
      token is trained.
    - ``right-padded``: the plain layout, logits everywhere; for models that take no
      position ids (prompt-learning methods put their virtual tokens first).
    """
    if layout == PACKED:
        ids, positions, targets = [], [], []
        for example in batch:
            ids += example.input_ids
            positions += range(len(example.input_ids))
            # A position predicts the next token of its own example, never the next example's first.
            targets += example.labels[1:] + [IGNORE_INDEX]
        trained = [i for i, target in enumerate(targets) if target != IGNORE_INDEX]
        inputs = {
            "input_ids": torch.tensor([ids], device=device),
            "position_ids": torch.tensor([positions], device=device),
            "logits_to_keep": torch.tensor(trained, device=device),
        }
        return inputs, torch.tensor([[targets[i] for i in trained]], device=device)
    width = max(len(example.input_ids) for example in batch)
    ids, targets, mask, positions = [], [], [], []
    for example in batch:
        pad = width - len(example.input_ids)
        shifted = example.labels[1:] + [IGNORE_INDEX]
        if layout == LEFT_PADDED:
            ids.append([pad_id] * pad + example.input_ids)
            targets.append([IGNORE_INDEX] * pad + shifted)
            mask.append([0] * pad + [1] * len(example.input_ids))
            positions.append([0] * pad + list(range(len(example.input_ids))))
        else:
            ids.append(example.input_ids + [pad_id] * pad)
            targets.append(shifted + [IGNORE_INDEX] * pad)
            mask.append([1] * len(example.input_ids) + [0] * pad)
    inputs = {"input_ids": torch.tensor(ids, device=device), "attention_mask": torch.tensor(mask, device=device)}
    target = torch.tensor(targets, device=device)
    if layout == LEFT_PADDED:
        trained_columns = (target != IGNORE_INDEX).any(0).nonzero()
        keep = width - int(trained_columns[0]) if len(trained_columns) else 1
        inputs["position_ids"] = torch.tensor(positions, device=device)
        inputs["logits_to_keep"] = keep
        target = target[:, width - keep :]
    return inputs, target


# On a CPU, rows up to this many tokens use transformers' plain ("eager") attention instead of
# PyTorch's fused kernel, whose backward pass dominates a step at these sizes. SmolLM2-135M,
# LoRA, bfloat16, 2 cores, tokens/s eager against fused: rows of 86 tokens 601 against 482,
# 170: 589 against 460, 253: 526 against 459, 337: 394 against 456.
EAGER_ATTENTION_MAX_WIDTH = 256


@contextmanager
def attention_for(model: Any, width: int) -> Iterator[None]:
    """Plain attention for the passes inside, where it is the faster on this device and for
    rows of up to ``width`` tokens; the model's own choice otherwise, and again after."""
    config = model.config
    if config._attn_implementation != "sdpa" or width > EAGER_ATTENTION_MAX_WIDTH or device_of(model).type != "cpu":
        yield
        return
    config._attn_implementation = "eager"
    try:
        yield
    finally:
        config._attn_implementation = "sdpa"


def checkpoint_activations(model: Any) -> bool:
    """Turns on transformers' gradient checkpointing in ``model`` (in a peft model, in its base),
    non-reentrant, which needs no gradient on the inputs: each layer keeps only its input, and
    recomputes the rest in the backward pass. False where the model cannot."""
    config = getattr(model, "active_peft_config", None)
    if config is not None and config.is_prompt_learning:
        return False  # the learned prefix joins every layer's attention: a layer cannot be rerun alone
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not getattr(base, "supports_gradient_checkpointing", False):
        return False
    if not base.is_gradient_checkpointing:
        base.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return True


@contextmanager
def frozen_linears_in(model: Any, dtype: torch.dtype | None) -> Iterator[None]:
    """Inside, each frozen float32 ``nn.Linear`` weight is replaced by a ``dtype`` copy, and
    put back after. Autocast would otherwise cast every frozen weight again at every pass
    (13% of a LoRA step on SmolLM2, in copies). The result is the same: autocast casts to
    that dtype anyway, and the trained parameters stay float32."""
    swapped = []
    if dtype is not None:
        for module in model.modules():
            weight = getattr(module, "weight", None)
            if isinstance(module, torch.nn.Linear) and weight.dtype == torch.float32 and not weight.requires_grad:
                swapped.append((module, weight))
                module.weight = torch.nn.Parameter(weight.detach().to(dtype), requires_grad=False)
    try:
        yield
    finally:
        for module, weight in swapped:
            module.weight = weight


@contextmanager
def adapter_inputs_uncast(model: Any, active: bool) -> Iterator[None]:
    """Inside, peft's adapter layers take their input in the dtype it comes in. By default
    they cast it to their float32 weights' dtype, and under autocast their matmul casts it
    straight back to bfloat16: two copies of the input of every adapted layer at every pass
    and two more in the backward pass, for the same bfloat16 values in the end.

    It sets the flag peft's own ``disable_input_dtype_casting`` sets, on every adapter layer;
    that helper reads the flag first and fails on layers that never had it (IA3's)."""
    try:
        from peft.tuners.tuners_utils import BaseTunerLayer
    except ImportError:  # not a peft model's concern, then
        active = False
    layers = [m for m in model.modules() if isinstance(m, BaseTunerLayer)] if active else []
    before = [getattr(layer, "cast_input_dtype_enabled", True) for layer in layers]
    for layer in layers:
        layer.cast_input_dtype_enabled = False
    try:
        yield
    finally:
        for layer, value in zip(layers, before, strict=True):
            layer.cast_input_dtype_enabled = value


def summed_loss(model: Any, inputs: dict[str, Any], targets: torch.Tensor) -> torch.Tensor:
    """Cross-entropy summed over the trained targets, in float32."""
    logits = model(**inputs, use_cache=False).logits
    trained = targets.reshape(-1) != IGNORE_INDEX
    logits = logits.reshape(-1, logits.shape[-1])[trained]
    return torch.nn.functional.cross_entropy(logits.float(), targets.reshape(-1)[trained], reduction="sum")


def total_steps(n_examples: int, hp: Hyperparameters) -> int:
    steps = hp.epochs * math.ceil(n_examples / hp.batch_size)
    return min(steps, hp.max_steps) if hp.max_steps else steps


def schedule(step: int, steps: int) -> float:
    """Linear warm-up over the first 10% of steps, then linear decay to zero."""
    warmup = max(1, steps // 10)
    if step < warmup:
        return (step + 1) / warmup
    return max(0.0, (steps - step) / max(1, steps - warmup))


@dataclass
class Position:
    """Where a training run is: the optimizer steps done, and what the next step trains."""

    step: int = 0
    # The epoch the next step belongs to, and that step's batch within the epoch.
    epoch: int = 0
    batch: int = 0
    # This epoch's order of the examples; None until the epoch draws it.
    order: list[int] | None = None


class TrainingRun:
    """One training of ``model``'s parameters that require grad, with AdamW.

    It holds everything the run's future depends on: the optimizer's and the schedule's
    state, the data order and the position in it, and the random number generators. So
    ``state_dict`` and ``load_state_dict`` are all a checkpoint needs besides the trained
    weights, and a run loaded from one goes on exactly as the run that saved it would have.

    ``autocast`` (a dtype) runs the forward and backward passes, and ``validate``, under
    ``torch.autocast``; the trained weights and AdamW's state keep their own dtype, frozen
    linear weights are held in ``autocast``'s dtype while training (``frozen_linears_in``)
    and adapters take their inputs as they come (``adapter_inputs_uncast``). ``layout`` is
    how each pass lays out its examples (``batch_inputs``).
    """

    def __init__(
        self,
        model: Any,
        examples: list[TokenizedExample],
        hp: Hyperparameters,
        pad_id: int,
        autocast: torch.dtype | None = None,
        layout: str = LEFT_PADDED,
    ) -> None:
        self.model, self.examples, self.hp, self.pad_id = model, examples, hp, pad_id
        self.autocast, self.layout = autocast, layout
        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError("the method left no trainable parameters")
        self.device = device_of(model)
        # Under torchrun, every process runs this same loop over the same batches; each takes
        # its share of every batch (``shard``), and DDP sums the gradients across them.
        self.rank, self.world = distributed_rank_and_size()
        self.forward_model = model
        if self.world > 1:
            from torch.nn.parallel import DistributedDataParallel

            ids = [self.device.index] if self.device.type == "cuda" else None
            self.forward_model = DistributedDataParallel(model, device_ids=ids)
        # PyTorch's fused AdamW: one kernel over all the parameters (5 ms a step for SmolLM2's
        # LoRA adapters on this CPU, against 17 ms for the default multi-tensor one).
        fused = self.device.type in ("cpu", "cuda") and len({p.dtype for p in self.params}) == 1
        self.optimizer = torch.optim.AdamW(self.params, lr=hp.learning_rate, weight_decay=0.0, fused=fused)
        self.steps = total_steps(len(examples), hp)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda s: schedule(s, self.steps))
        self.batches_per_epoch = math.ceil(len(examples) / hp.batch_size)
        self.shuffler = random.Random(hp.seed)
        self.position = Position()

    def state_dict(self) -> dict[str, Any]:
        """The run's state apart from the trained weights, for ``torch.save``."""
        state = {
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "position": asdict(self.position),
            "shuffler": self.shuffler.getstate(),
            "torch_rng": torch.get_rng_state(),
        }
        if self.device.type == "cuda":
            state["cuda_rng"] = torch.cuda.get_rng_state(self.device)
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.position = Position(**state["position"])
        version, internal, gauss = state["shuffler"]
        self.shuffler.setstate((version, tuple(internal), gauss))
        torch.set_rng_state(state["torch_rng"])
        if "cuda_rng" in state and self.device.type == "cuda":
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)

    @property
    def epoch(self) -> float:
        """Epochs done, as a fraction."""
        return self.position.epoch + self.position.batch / self.batches_per_epoch

    def run(
        self,
        on_progress: Callable[[Progress], None],
        validate: Callable[[int, float], None] | None = None,
        after_step: Callable[[TrainingRun, bool], None] | None = None,
    ) -> None:
        """Trains from the current position to the last step.

        ``validate(step, epoch)``, when given, is called at the end of every epoch and at
        the last step; the model is back in training mode after it returns.
        ``after_step(run, epoch_ended)`` is called after every step (and its validation), with
        the position already past it: where a checkpoint taken then resumes.
        """
        # The attention is chosen once for the whole training, not per pass: a method that
        # recomputes activations in the backward pass (gradient checkpointing, as qlora's) must
        # recompute them with the attention that computed them.
        size = self.hp.micro_batch_size or self.hp.batch_size
        lengths = sorted((len(example.input_ids) for example in self.examples), reverse=True)
        widest = sum(lengths[:size]) if self.layout == PACKED else lengths[0]
        with (
            frozen_linears_in(self.model, self.autocast),
            adapter_inputs_uncast(self.model, self.autocast is not None),
            attention_for(self.model, widest),
        ):
            self._run(on_progress, validate, after_step)

    def _draw_order(self) -> list[int]:
        """A new epoch's order of the examples: shuffled, and grouped by length unless the
        run packs or was asked not to."""
        order = list(range(len(self.examples)))
        self.shuffler.shuffle(order)
        if self.hp.group_by_length and self.layout != PACKED:
            lengths = [len(example.input_ids) for example in self.examples]
            order = grouped_by_length(order, lengths, self.hp.batch_size, self.shuffler)
        return order

    def _precision(self) -> Any:
        """The passes' arithmetic; the optimizer's stays float32."""
        if self.autocast is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.autocast)

    def _run(
        self,
        on_progress: Callable[[Progress], None],
        validate: Callable[[int, float], None] | None,
        after_step: Callable[[TrainingRun, bool], None] | None,
    ) -> None:
        hp, position = self.hp, self.position
        self.model.train()
        while position.step < self.steps:
            if position.order is None:
                position.order = self._draw_order()
            started = time.perf_counter()
            first = position.batch * hp.batch_size
            step_examples = [self.examples[i] for i in position.order[first : first + hp.batch_size]]
            with self._precision():
                loss, tokens = accumulate_gradients(
                    self.forward_model,
                    shard(step_examples, self.rank, self.world),
                    hp.micro_batch_size,
                    self.pad_id,
                    self.device,
                    self.layout,
                    self.world,
                )
            torch.nn.utils.clip_grad_norm_(self.params, 1.0)
            learning_rate = self.scheduler.get_last_lr()[0]
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            position.step += 1
            position.batch += 1
            on_progress(
                Progress(
                    step=position.step,
                    total_steps=self.steps,
                    epoch=self.epoch,
                    loss=loss,
                    learning_rate=learning_rate,
                    tokens_per_second=tokens / (time.perf_counter() - started),
                    peak_memory_bytes=peak_memory_bytes(self.device),
                )
            )
            epoch_ended = position.batch == self.batches_per_epoch or position.step == self.steps
            if epoch_ended and validate is not None:
                with self._precision():
                    validate(position.step, self.epoch)
                self.model.train()
            if position.batch == self.batches_per_epoch:
                position.epoch, position.batch, position.order = position.epoch + 1, 0, None
            if after_step is not None:
                after_step(self, epoch_ended)


# Examples are sorted by length within runs of this many batches: enough for batches with
# almost no padding, few enough that which examples meet in a batch stays random.
GROUP_BATCHES = 32


def grouped_by_length(order: list[int], lengths: list[int], batch_size: int, rng: random.Random) -> list[int]:
    """``order`` (already shuffled) rearranged so that each batch of ``batch_size`` holds
    examples of similar length: runs of ``GROUP_BATCHES`` batches are sorted by length and
    cut into batches, and the full batches are shuffled (with ``rng``) so that the steps do
    not go from short to long. A last, smaller batch stays last, where the loop expects it.

    The Hugging Face Trainer's ``group_by_length`` groups the same way but keeps each run's
    batches in order of length; on the demo's tickets this leaves 0.6% of a padded batch as
    padding, against 11% for shuffled batches (bench/README.md)."""
    run = batch_size * GROUP_BATCHES
    full: list[list[int]] = []
    rest: list[int] = []
    for start in range(0, len(order), run):
        chunk = sorted(order[start : start + run], key=lengths.__getitem__)
        for i in range(0, len(chunk), batch_size):
            batch = chunk[i : i + batch_size]
            if len(batch) == batch_size:
                full.append(batch)
            else:
                rest = batch
    rng.shuffle(full)
    return [i for batch in full for i in batch] + rest


def train(
    model: Any,
    examples: list[TokenizedExample],
    hp: Hyperparameters,
    pad_id: int,
    on_progress: Callable[[Progress], None],
    validate: Callable[[int, float], None] | None = None,
    autocast: torch.dtype | None = None,
    layout: str = LEFT_PADDED,
) -> None:
    """Trains the parameters of ``model`` that require grad, from the start to the last
    step: a ``TrainingRun`` without checkpoints."""
    TrainingRun(model, examples, hp, pad_id, autocast, layout).run(on_progress, validate)


def distributed_rank_and_size() -> tuple[int, int]:
    """This process's rank and the number of processes training together (0, 1 without
    torch.distributed)."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def shard(examples: list[TokenizedExample], rank: int, world: int) -> list[TokenizedExample]:
    """This process's share of a batch: every ``world``-th example from the ``rank``-th, as
    torch's DistributedSampler deals them. A process left without one (a last batch smaller
    than the number of processes) gets none; ``accumulate_gradients`` still joins the
    gradient exchange."""
    return examples[rank::world]


def accumulate_gradients(
    model: Any,
    examples: list[TokenizedExample],
    micro_batch_size: int,
    pad_id: int,
    device: torch.device,
    layout: str = LEFT_PADDED,
    world: int = 1,
) -> tuple[float, int]:
    """Adds to the parameters' ``.grad`` the gradient of the batch's mean loss per trained
    token, in passes of ``micro_batch_size`` examples (0: one pass). Each pass's summed loss
    is divided by the whole batch's trained tokens, so the gradient is the one pass's over
    the whole batch, whatever the split. Returns (the batch's mean loss, its real tokens).

    With ``world`` > 1, ``model`` is wrapped in DistributedDataParallel and ``examples`` are
    this process's share of the batch: the trained tokens are counted over every process,
    and each pass's loss is multiplied by ``world``, because DDP averages the gradients it
    exchanges where the batch's gradient is their sum. The loss and tokens returned are the
    whole batch's."""
    size = micro_batch_size or max(1, len(examples))
    passes = [batch_inputs(examples[i : i + size], pad_id, layout, device) for i in range(0, len(examples), size)]
    trained = [int((targets != IGNORE_INDEX).sum()) for _, targets in passes]
    tokens = sum(len(example.input_ids) for example in examples)
    if world == 1:
        total = max(1, sum(trained))
        loss = 0.0
        for (inputs, targets), count in zip(passes, trained, strict=True):
            if count == 0:
                continue
            part = summed_loss(model, inputs, targets) / total
            part.backward()
            loss += float(part.detach())
        return loss, tokens

    counts = torch.tensor([float(sum(trained)), float(tokens)])
    torch.distributed.all_reduce(counts)
    total = max(1.0, float(counts[0]))
    loss = torch.zeros(())
    if not passes:  # no example here this step: a pass that adds nothing keeps DDP in step
        nothing = model(input_ids=torch.tensor([[pad_id]], device=device), use_cache=False).logits
        (nothing.float().sum() * 0.0).backward()
    for i, (inputs, targets) in enumerate(passes):
        # DDP exchanges gradients once, in the last pass's backward.
        sync = nullcontext() if i == len(passes) - 1 else model.no_sync()
        with sync:
            part = summed_loss(model, inputs, targets) / total
            (part * world).backward()
        loss += part.detach().float()
    torch.distributed.all_reduce(loss)
    return float(loss), int(counts[1])


def autocast_dtype(precision: str, runtime: Runtime) -> tuple[torch.dtype | None, str]:
    """The dtype ``train`` autocasts to for ``precision`` ("auto", "bf16", "fp32") on this
    device (None: no autocast), and a line for the job's events saying why."""
    if precision == "fp32":
        return None, "precision: float32, as asked"
    if precision == "bf16":
        native = "" if runtime.bf16 else " (this device emulates bfloat16: slower than float32)"
        return torch.bfloat16, f"precision: bfloat16 autocast, as asked{native}"
    if runtime.bf16:
        return torch.bfloat16, f"precision: bfloat16 autocast ({runtime.device} computes bfloat16 natively)"
    return None, f"precision: float32 ({runtime.device} has no native bfloat16)"


def layout_for(packing: bool, takes_position_ids: bool, group_by_length: bool = True) -> tuple[str, str]:
    """The batch layout a job trains with, and a line for its events saying why."""
    grouped = ", examples grouped by length" if group_by_length else ", examples shuffled"
    if not takes_position_ids:
        return (
            RIGHT_PADDED,
            f"batches: right-padded (the method takes no position ids), logits at every position{grouped}",
        )
    if packing:
        return PACKED, "batches: packed into one row per pass, attention kept within each example"
    return LEFT_PADDED, f"batches: left-padded, logits only where a token is trained{grouped}"


@torch.no_grad()
def mean_loss(
    model: Any, examples: list[TokenizedExample], pad_id: int, batch_size: int = 16, layout: str = LEFT_PADDED
) -> float:
    """Mean cross-entropy per trained token, in nats."""
    model.eval()
    device = device_of(model)
    total, count = 0.0, 0
    for i in range(0, len(examples), batch_size):
        inputs, targets = batch_inputs(examples[i : i + batch_size], pad_id, layout, device)
        if bool((targets != IGNORE_INDEX).any()):
            # No backward pass here, so the attention can follow each batch's width.
            with attention_for(model, inputs["input_ids"].shape[1]):
                total += float(summed_loss(model, inputs, targets))
        count += int((targets != IGNORE_INDEX).sum())
    return total / max(1, count)


@torch.no_grad()
def generate_answers(
    model: Any, tokenizer: Any, conversations: list[list[dict[str, str]]], max_new_tokens: int, batch_size: int = 64
) -> list[str]:
    """Greedy answers to each conversation's last assistant turn, stopping at end of turn.

    The batches are large: on a CPU a generation step costs little more for 42 rows than
    for 16, so the demo's 42 test questions go in one batch (12 s against 16.5 s in three
    batches of 16 for SmolLM2, with the same answers)."""
    model.eval()
    stop_ids = [tokenizer.convert_tokens_to_ids(t) for t in end_of_turn_tokens(tokenizer)] or [tokenizer.eos_token_id]
    side = tokenizer.padding_side
    tokenizer.padding_side = "left"
    answers = []
    try:
        for i in range(0, len(conversations), batch_size):
            prompts = [
                render(tokenizer, prompt_and_reference(c)[0], generation_prompt=True)
                for c in conversations[i : i + batch_size]
            ]
            encoded = tokenizer(prompts, return_tensors="pt", padding=True, add_special_tokens=False).to(
                device_of(model)
            )
            output = model.generate(
                **encoded,
                max_new_tokens=max_new_tokens,
                do_sample=False,
                eos_token_id=stop_ids,
                pad_token_id=tokenizer.pad_token_id,
            )
            width = encoded["input_ids"].shape[1]
            answers.extend(tokenizer.decode(row[width:], skip_special_tokens=True).strip() for row in output)
    finally:
        tokenizer.padding_side = side
    return answers


def score(answers: list[str], references: list[str]) -> dict[str, float]:
    def first_line(text: str) -> str:
        return text.strip().splitlines()[0].strip().lower() if text.strip() else ""

    n = max(1, len(references))
    return {
        "exact_match": sum(a.strip() == r.strip() for a, r in zip(answers, references, strict=True)) / n,
        "first_line_match": sum(first_line(a) == first_line(r) for a, r in zip(answers, references, strict=True)) / n,
    }
