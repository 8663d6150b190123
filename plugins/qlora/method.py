"""QLoRA: LoRA adapters trained on a frozen 4-bit (NF4) copy of the base, through
bitsandbytes, which runs 4-bit layers on CUDA and on the CPU.

The adapter learned to correct the *quantized* base, so merging rebuilds that same
quantized base (quantization is deterministic), dequantizes it to float32 and only then
adds the adapter. Adding the adapter to the original float32 weights would give a model
that was never trained; adding it into 4-bit weights would round the update away.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tunewright.estimate import FLOAT32, Footprint, ModelShape
from tunewright.methods import ArtifactKind, Capabilities, Runtime
from tunewright.plugins.lora.method import peft_lora_config
from tunewright.plugins.peft_adapters import check_target_modules, load_adapter, merge_adapter, save_adapter
from tunewright.plugins.qlora.config import QloraConfig

CPU = Runtime("cpu", bf16=False)
# For the estimate, measured with bench/memory.py: a step against 4-bit weights takes this
# many times as long as against float32 ones (each weight is dequantized at every use), and
# importing bitsandbytes takes this much memory.
QLORA_SLOWDOWN = 1.05
BITSANDBYTES_BYTES = 60 * 2**20
# What a qlora worker holds on the CPU besides the base, its adapters and activations, per
# byte of the base's linear weights in float32: measured with bench/memory.py at 135M, 360M
# and 1B (0.6 to 1.45 of them), not yet accounted for part by part. Loading passes every
# weight through float32 to quantize it, and bitsandbytes dequantizes weights for each pass.
QLORA_WORKING_PER_FLOAT32_BYTE = 1.2


def load_quantized(folder: Path, config: QloraConfig, runtime: Runtime) -> Any:
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, BitsAndBytesConfig

    from tunewright.core.families import attention_implementation

    compute_dtype = runtime.compute_dtype if config.compute_dtype == "auto" else getattr(torch, config.compute_dtype)
    quantization = BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type=config.quant_type,
        bnb_4bit_use_double_quant=config.double_quant,
        bnb_4bit_compute_dtype=compute_dtype,
    )
    # Weights are read as float32 before quantization whatever the compute precision, so
    # that the training worker and a later merge quantize the same numbers the same way.
    base_config = AutoConfig.from_pretrained(folder, trust_remote_code=False)
    model = AutoModelForCausalLM.from_pretrained(
        folder,
        config=base_config,
        quantization_config=quantization,
        dtype=torch.float32,
        device_map=runtime.device,
        use_safetensors=True,
        trust_remote_code=False,
        attn_implementation=attention_implementation(base_config),
    )
    return keep_one_layout(release_checkpoint(model))


def release_checkpoint(model: Any) -> Any:
    """Copies the tensors that were not quantized (embeddings, norms) out of the
    memory-mapped checkpoint. While any tensor points into it the whole file stays mapped,
    and every page read while quantizing stays resident: about 400 MB for SmolLM2-135M,
    more than the quantized model itself."""
    import bitsandbytes as bnb

    for tensor in [*model.parameters(), *model.buffers()]:
        if not isinstance(tensor, bnb.nn.Params4bit):
            tensor.data = tensor.data.clone()
    return model


def keep_one_layout(model: Any) -> Any:
    """Keeps bitsandbytes from repacking 4-bit weights for its fast CPU inference kernel.

    On CPUs with AVX512-BF16, the first forward pass in eval mode (the base model's
    evaluation, a validation pass) repacks each layer's weights for a kernel that has no
    backward: from then on no gradient flows through the frozen layers' inputs, and
    training quietly goes wrong. That kernel also rounds differently, so a model served
    with it would not compute what was trained. Every model here keeps the one layout.
    """
    import bitsandbytes as bnb

    for module in model.modules():
        if isinstance(module, bnb.nn.Linear4bit):
            module.support_avx512bf16_for_cpu = False
    return model


def _for_kbit_training(model: Any, config: QloraConfig) -> Any:
    import peft

    # Casts the layers left unquantized (norms, embeddings) to float32 for stable training.
    return peft.prepare_model_for_kbit_training(
        model,
        use_gradient_checkpointing=config.gradient_checkpointing,
        gradient_checkpointing_kwargs={"use_reentrant": False},
    )


class QloraMethod:
    name = "qlora"
    description = (
        "QLoRA (peft + bitsandbytes): LoRA on a frozen 4-bit NF4 base, with gradient checkpointing; "
        "the least memory. Merging dequantizes the base first."
    )
    config_class = QloraConfig
    capabilities = Capabilities(
        artifact_kind=ArtifactKind.ADAPTER,
        mergeable=True,
        exportable=True,
        quantized_base=True,
        required_packages=("peft", "bitsandbytes"),
    )
    default_learning_rate = 1e-3

    def load_base(self, folder: Path, config: QloraConfig, runtime: Runtime) -> Any:
        return load_quantized(folder, config, runtime)

    def footprint(self, shape: ModelShape, config: QloraConfig, runtime: Runtime) -> Footprint:
        # Half a byte a linear weight, plus a float32 scale per block of 64 (or, double
        # quantized, a byte per block and a float32 per 256 blocks); the rest stays float32.
        scales = 1 / 64 + 4 / (64 * 256) if config.double_quant else 4 / 64
        frozen = shape.linear_params * (0.5 + scales) + (shape.params - shape.linear_params) * FLOAT32
        return Footprint(
            trainable=shape.lora_params(config.r, config.target_modules),
            frozen_bytes=int(frozen),
            checkpointing=config.gradient_checkpointing,
            slowdown=QLORA_SLOWDOWN,
            runtime_bytes=BITSANDBYTES_BYTES,
            working_bytes=int(QLORA_WORKING_PER_FLOAT32_BYTE * shape.linear_params * FLOAT32),
        )

    def prepare(self, model: Any, config: QloraConfig) -> Any:
        import peft

        targets = check_target_modules(model, config.target_modules)
        return peft.get_peft_model(_for_kbit_training(model, config), peft_lora_config(config, targets))

    def save(self, model: Any, config: QloraConfig, directory: Path) -> None:
        save_adapter(model, directory)

    def load_trained(
        self, folder: Path, config: QloraConfig, directory: Path, runtime: Runtime, trainable: bool
    ) -> Any:
        base = load_quantized(folder, config, runtime)
        return load_adapter(_for_kbit_training(base, config) if trainable else base, directory, trainable)

    def merge(self, folder: Path, config: QloraConfig, directory: Path) -> Any:
        import torch

        # The same quantized base the adapter was trained on, made float32 again.
        base = load_quantized(folder, config, CPU).dequantize(dtype=torch.float32)
        return merge_adapter(base.to(torch.float32), directory)
