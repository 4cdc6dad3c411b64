"""Library messages a user cannot act on, kept out of the console. Each filter names one message
and says why it is harmless; everything else the libraries say is left as it is."""

from __future__ import annotations

import logging


class DropMessages(logging.Filter):
    """Drops a logger's records whose message starts with one of `prefixes`."""

    def __init__(self, *prefixes: str):
        super().__init__()
        self.prefixes = prefixes

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefixes)


def quiet_known_noise() -> None:
    """Install the filters (before the libraries are imported: loggers are found by name)."""
    # bitsandbytes 0.50 on a CPU with AVX512-BF16 tries a faster 4-bit kernel from the hub
    # through the optional `kernels` package, which the lock leaves out (and the hub is often
    # unreachable); it then uses its own CPU kernel, the one tunebench's QLoRA tests exercise.
    # It logs this at every import, `tunebench reproduce --list` included.
    logging.getLogger("bitsandbytes.backends.cpu.ops").addFilter(
        DropMessages("Failed to load CPU gemm_4bit_forward from kernels-community")
    )
    # bitsandbytes' 8-bit layers log on every forward pass that they cast their inputs to
    # float16 ("MatMul8bitLt: inputs will be cast from ..."): that cast is how LLM.int8()
    # computes, nothing to change.
    logging.getLogger("bitsandbytes.autograd._functions").addFilter(
        DropMessages("MatMul8bitLt: inputs will be cast")
    )
