"""Keep secrets out of logs and results: the value of any environment variable whose name looks
like a secret (HF_TOKEN, WANDB_API_KEY, AWS_SECRET_ACCESS_KEY, ...) is replaced by ***.

Results never copy the environment wholesale; this is the second line of defence, for secrets
that reach a message anyway (an exception quoting a URL with a token, a library's log line).
"""

from __future__ import annotations

import os
import re
import sys
from typing import Any

SECRET_NAME = re.compile(
    r"TOKEN|SECRET|PASSWORD|PASSWD|API_?KEY|PRIVATE_?KEY|CREDENTIAL|ACCESS_?KEY|AUTH", re.I
)
MIN_SECRET_LENGTH = 6  # shorter values ("1", "true") would redact ordinary text
MASK = "***"


def secret_values() -> list[str]:
    values = {
        v for k, v in os.environ.items() if SECRET_NAME.search(k) and len(v) >= MIN_SECRET_LENGTH
    }
    return sorted(values, key=len, reverse=True)  # longest first: no partial leftovers


def redact(text: str, secrets: list[str] | None = None) -> str:
    for value in secret_values() if secrets is None else secrets:
        text = text.replace(value, MASK)
    return text


def redact_data(data: Any, secrets: list[str] | None = None) -> Any:
    """The same structure with every string (keys included) redacted."""
    secrets = secret_values() if secrets is None else secrets
    if not secrets:
        return data
    if isinstance(data, str):
        return redact(data, secrets)
    if isinstance(data, dict):
        return {redact_data(k, secrets): redact_data(v, secrets) for k, v in data.items()}
    if isinstance(data, list | tuple):
        return [redact_data(v, secrets) for v in data]
    return data


class RedactingStream:
    """A text stream wrapper that redacts what is written through it."""

    def __init__(self, stream):
        self._stream = stream
        self._secrets = secret_values()

    def write(self, text: str) -> int:
        return self._stream.write(redact(text, self._secrets))

    def __getattr__(self, name: str):
        return getattr(self._stream, name)


def protect_output_streams() -> None:
    """Redact this process's stdout and stderr (job logs are these streams)."""
    if secret_values():
        sys.stdout = RedactingStream(sys.stdout)
        sys.stderr = RedactingStream(sys.stderr)
