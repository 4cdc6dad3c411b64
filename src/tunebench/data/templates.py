"""Render an example into (prompt text, response text) with a chat template.

`auto` uses the model's own chat template when its tokenizer has one and the alpaca layout
otherwise; `alpaca` and `chatml` are named templates; `custom` is a Jinja chat template from the
experiment. The split point between prompt and response is where the loss mask starts.
"""

from __future__ import annotations

from dataclasses import dataclass

from jinja2.sandbox import ImmutableSandboxedEnvironment

ALPACA_TURN = "### Instruction:\n{user}\n\n### Response:\n"
CHATML_TURN = "<|im_start|>{role}\n{content}<|im_end|>\n"
# Text that ends a response in a named template; generations are cut there.
STOP_STRINGS = {"chatml": ("<|im_end|>",)}


@dataclass(frozen=True)
class Rendered:
    prompt: str
    response: str


def _alpaca(history: list[dict], bos: str) -> str:
    text = bos
    for message in history:
        if message["role"] == "system":
            text += message["content"] + "\n\n"
        elif message["role"] == "user":
            text += ALPACA_TURN.format(user=message["content"])
        else:  # an earlier assistant turn of a multi-turn conversation
            text += message["content"] + "\n\n"
    return text


def _chatml(history: list[dict]) -> str:
    turns = "".join(CHATML_TURN.format(role=m["role"], content=m["content"]) for m in history)
    return turns + "<|im_start|>assistant\n"


def _jinja(template: str, history: list[dict], tokenizer) -> str:
    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True)
    return env.from_string(template).render(
        messages=history,
        add_generation_prompt=True,
        bos_token=tokenizer.bos_token or "",
        eos_token=tokenizer.eos_token or "",
    )


def resolve(template: str, tokenizer) -> str:
    if template == "auto":
        return "model" if tokenizer.chat_template else "alpaca"
    if template == "model" and not tokenizer.chat_template:
        raise ValueError(
            "template: model, but this tokenizer has no chat template; "
            "use template: auto, alpaca, chatml or custom"
        )
    return template


def render(example: dict, tokenizer, template: str, custom_template: str | None = None) -> Rendered:
    """A chat example -> prompt (up to where the response starts) and response (+ end tokens).
    A plain-text example is all response: continued pre-training learns every token."""
    eos = tokenizer.eos_token or ""
    if "text" in example:
        return Rendered(tokenizer.bos_token or "", example["text"] + eos)
    history, reply = example["messages"][:-1], example["messages"][-1]["content"]
    kind = resolve(template, tokenizer)
    if kind == "model":
        prompt = tokenizer.apply_chat_template(history, tokenize=False, add_generation_prompt=True)
    elif kind == "custom":
        prompt = _jinja(custom_template, history, tokenizer)
    elif kind == "chatml":
        prompt = _chatml(history)
        return Rendered(prompt, reply + "<|im_end|>" + eos)
    else:
        prompt = _alpaca(history, tokenizer.bos_token or "")
    return Rendered(prompt, reply + eos)


def cut_at_stop(text: str, template: str) -> str:
    for stop in STOP_STRINGS.get(template, ()):
        text = text.split(stop, 1)[0]
    return text.strip()
