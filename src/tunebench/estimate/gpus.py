"""Accelerators the estimator knows: memory, dense matrix throughput and memory bandwidth.

Sources: NVIDIA's datasheets and architecture whitepapers (dense, i.e. without 2:4 sparsity;
16-bit matrix rates with float32 accumulation, which is what PyTorch uses). `memory_gib` is the
total that `nvidia-smi` and `torch.cuda.get_device_properties().total_memory` typically report,
which is what an out-of-memory is measured against. Only the H200's was read here (143,771 MiB
on the H200 lent to this project); the others are the usual readings for the datasheet's
capacity, not measured by this project. A GPU not listed here can still be named with
`--gpu NAME:GIB`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Gpu:
    name: str
    memory_gib: float
    bf16_tflops: float | None  # dense; None where the GPU has no bf16 tensor cores
    fp16_tflops: float
    fp32_tflops: float  # plain float32 (no TF32)
    bandwidth_tbs: float
    source: str

    def peak_tflops(self, dtype: str) -> float:
        if dtype == "bfloat16":
            return self.bf16_tflops or self.fp32_tflops
        if dtype == "float16":
            return self.fp16_tflops
        return self.fp32_tflops


_DS = "NVIDIA datasheet"
GPUS = {
    g.name.lower(): g
    for g in (
        Gpu("H200", 140.4, 989, 989, 67, 4.8, f"{_DS} H200 SXM (2024)"),
        Gpu("H100", 79.6, 989, 989, 67, 3.35, f"{_DS} H100 SXM (2023)"),
        Gpu("H100-PCIe", 79.6, 756, 756, 51, 2.0, f"{_DS} H100 PCIe (2023)"),
        Gpu("A100-80GB", 80.0, 312, 312, 19.5, 2.039, f"{_DS} A100 SXM4 80GB (2021)"),
        Gpu("A100-40GB", 40.0, 312, 312, 19.5, 1.555, f"{_DS} A100 SXM4 40GB (2020)"),
        Gpu("L40S", 45.0, 362, 362, 91.6, 0.864, f"{_DS} L40S (2023)"),
        Gpu("L40", 45.0, 181, 181, 90.5, 0.864, f"{_DS} L40 (2022)"),
        Gpu("A6000", 48.0, 154.8, 154.8, 38.7, 0.768, f"{_DS} RTX A6000 (2021)"),
        Gpu("RTX-4090", 24.0, 165.2, 165.2, 82.6, 1.008, "NVIDIA Ada whitepaper v2.1, RTX 4090"),
        Gpu("RTX-3090", 24.0, 71, 71, 35.6, 0.936, "NVIDIA Ampere GA102 whitepaper, RTX 3090"),
        Gpu("A10G", 22.5, 70, 70, 35, 0.6, "AWS G5 documentation (A10G)"),
        Gpu("L4", 22.5, 121, 121, 30.3, 0.3, f"{_DS} L4 (2023)"),
        Gpu("T4", 15.0, None, 65, 8.1, 0.32, f"{_DS} T4 (2019)"),
        Gpu("V100-32GB", 31.7, None, 125, 15.7, 0.9, f"{_DS} V100 SXM2 (2018)"),
    )
}


def _tokens(name: str) -> set[str]:
    return set(re.findall(r"[a-z0-9]+", name.lower()))


def find(name: str) -> Gpu:
    """A GPU by its name here ("A100-80GB", "h100") or as CUDA names it ("NVIDIA
    A100-SXM4-80GB", "NVIDIA L40S"): the one whose name's parts all appear; or NAME:GIB for
    any other GPU (memory verdicts only: no peak rate, so no time estimate)."""
    if ":" in name:
        label, gib = name.rsplit(":", 1)
        try:
            return Gpu(label, float(gib), None, 0.0, 0.0, 0.0, "given on the command line")
        except ValueError:
            pass
    wanted = _tokens(name.replace("-", " "))
    exact = [g for k, g in GPUS.items() if _tokens(k) == wanted]
    matches = exact or [g for k, g in GPUS.items() if _tokens(k) <= wanted]
    if len(matches) == 1:
        return matches[0]
    raise KeyError(
        f"unknown GPU {name!r}: use one of {', '.join(g.name for g in GPUS.values())}, "
        "or NAME:GIB (e.g. mygpu:32)"
    )
