"""The file that ships: a trained float student in its format (fp32, fp16, int8) as a TorchScript file, and what it
measures on a CPU.

Every format's file takes float32 images and returns float32 logits (the model card's input layout), so a user
loads any of them the same way, with plain `torch.jit.load`. fp16 stores the weights in half precision and computes
in float32 (`fp16_stored`); int8 is kdsearch.quantize's static quantization, int8 arithmetic.
"""

from __future__ import annotations

import copy
import io
import platform
import statistics
import time
import warnings
from pathlib import Path
from typing import Iterable

import torch
from torch import nn

from .quantize import int8_model

FILE = "student.torchscript.pt"
"""The shipped file's name, in a trial's checkpoint and in the export."""
WEIGHTS_FILE = "student.pt"  # the weights in the shipped format (the contract's export layout); its stem: see
# sizes.state_dict_bytes
DTYPES = {"fp32": torch.float32, "fp16": torch.float16}
LATENCY_RUNS = 30
LATENCY_WARMUP = 5


def _cast_up(module: nn.Module, _args) -> None:
    """A forward pre-hook: the module's float16 tensors as the float32 ones its forward reads."""
    for name in module._fp16_names:
        object.__setattr__(module, name, getattr(module, f"{name}_fp16").float())


def fp16_stored(model: nn.Module) -> nn.Module:
    """A copy of `model` whose parameters and floating buffers are stored in float16 (a file of half the size) and
    cast up to float32 at each call, so it computes in float32: x86 CPUs have no fast float16 kernels (one warm
    forward of a 224-px image through ResNet-18, 2 threads on this project's machine: 29.8 s in float16 arithmetic,
    0.3 s this way). Its
    outputs equal the float model's with float16-rounded weights, which is what the weights file `student.pt`
    holds."""
    model = copy.deepcopy(model).float().eval()
    for module in model.modules():
        names = [n for n, _ in module.named_parameters(recurse=False)]
        names += [n for n, b in module.named_buffers(recurse=False) if b.is_floating_point()]
        for name in names:
            tensor = getattr(module, name).detach()
            delattr(module, name)
            module.register_buffer(f"{name}_fp16", tensor.half())
        if names:
            module._fp16_names = names
            _cast_up(module, ())
            module.register_forward_pre_hook(_cast_up)  # traced: the file holds the casts, then float32 ops
    return model


def cast_state_dict(model: nn.Module, precision: str) -> dict[str, torch.Tensor]:
    """A float model's state_dict as exported: floating tensors in `precision` (fp32 | fp16), integer buffers
    untouched."""
    dtype = DTYPES[precision]
    return {k: (v.to(dtype) if v.is_floating_point() else v).detach().cpu() for k, v in model.state_dict().items()}


def weights(model: nn.Module, deployed: nn.Module, fmt: str) -> dict[str, torch.Tensor]:
    """The weights file's contents in `fmt`: the float `model`'s state_dict cast to fp32 or fp16, or the int8
    `deployed` model's own (quantized tensors; it loads into kdsearch.quantize's twin after `int8_model`)."""
    return deployed.state_dict() if fmt == "int8" else cast_state_dict(model, fmt)


def as_format(model: nn.Module, student: str, fmt: str, num_classes: int,
              calibration: Iterable[torch.Tensor]) -> nn.Module:
    """A CPU copy of the trained float `model` in `fmt`; `calibration` (model inputs) sets int8's activation ranges."""
    float_model = copy.deepcopy(model).float().cpu().eval()
    if fmt == "fp32":
        return float_model
    if fmt == "fp16":
        return fp16_stored(float_model)
    return int8_model(float_model, student, num_classes, calibration)


def script_bytes(model: nn.Module, image_size: int) -> bytes:
    """`model` (any format) traced at batch 1 and saved as a TorchScript file, in memory."""
    example = torch.zeros(1, 3, image_size, image_size)
    buffer = io.BytesIO()
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")  # TorchScript (and the eager int8 flow) are deprecated but are what ships
        torch.jit.save(torch.jit.trace(model.eval(), example), buffer)
    return buffer.getvalue()


def load(data: bytes | Path) -> torch.jit.ScriptModule:
    """A shipped file loaded as a user loads it, on the CPU."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return torch.jit.load(io.BytesIO(data) if isinstance(data, bytes) else str(data), map_location="cpu")


def cpu_name() -> str:
    """The CPU's model name (Linux /proc/cpuinfo; else what the platform module says)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def latency_ms(model: torch.jit.ScriptModule, image_size: int, runs: int = LATENCY_RUNS,
               warmup: int = LATENCY_WARMUP) -> float:
    """Median milliseconds of one image (batch 1) through `model` on one CPU thread, after `warmup` runs."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        x = torch.rand(1, 3, image_size, image_size)
        times = []
        with torch.no_grad():
            for i in range(warmup + runs):
                start = time.perf_counter()
                model(x)
                if i >= warmup:
                    times.append((time.perf_counter() - start) * 1000)
        return statistics.median(times)
    finally:
        torch.set_num_threads(threads)
