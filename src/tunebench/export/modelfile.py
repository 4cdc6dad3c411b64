"""An Ollama Modelfile for an exported GGUF, carrying the model's chat template.

Ollama templates are Go templates, not Jinja, so the tokenizer's Jinja template cannot be copied
in. It is rendered instead, with placeholder messages (one user turn, with and without a system
message, and with a reply), and the placeholders become `{{ .System }}`, `{{ .Prompt }}` and
`{{ .Response }}`: exact for the single-turn layout Ollama's classic template describes. The
result is checked by rendering it back (`render_go`) and comparing with the Jinja rendering of
other messages; one that does not reproduce it is left out rather than written wrong (Ollama then
falls back on the Jinja template the GGUF embeds as tokenizer.chat_template).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field

# Placeholder messages: plain words, which any template passes through unchanged.
SYSTEM = "TunebenchSystemPlaceholder"
PROMPT = "TunebenchPromptPlaceholder"
RESPONSE = "TunebenchResponsePlaceholder"
ACTIONS = {SYSTEM: "{{ .System }}", PROMPT: "{{ .Prompt }}", RESPONSE: "{{ .Response }}"}


class ModelfileError(ValueError):
    """The chat template cannot be expressed as an Ollama template."""


@dataclass
class GoTemplate:
    text: str | None  # None: no usable template (the reason is in `notes`)
    stops: list[str]
    notes: list[str] = field(default_factory=list)


def _render(tokenizer, messages: list[dict], generation_prompt: bool, strip_bos: bool) -> str:
    text = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=generation_prompt
    )
    # A runtime that adds BOS itself (the GGUF says add_bos_token) would add a second one.
    bos = tokenizer.bos_token
    if strip_bos and bos and text.startswith(bos):
        text = text[len(bos) :]
    return text


def _literal(text: str) -> str:
    """Text as a Go template literal: only `{{` opens an action."""
    return text.replace("{{", '{{ "{{" }}')


def _go(text: str) -> str:
    """A rendering with placeholders -> Go template text."""
    pattern = "|".join(re.escape(p) for p in ACTIONS)
    parts = re.split(f"({pattern})", text)
    return "".join(ACTIONS.get(p, _literal(p)) for p in parts)


def _inside_placeholder(text: str, cut: int) -> int | None:
    """The start of a placeholder that `cut` falls strictly inside, if any."""
    for placeholder in ACTIONS:
        for found in re.finditer(re.escape(placeholder), text):
            if found.start() < cut < found.end():
                return found.start()
    return None


def _split_system(plain: str, with_system: str) -> tuple[str, str, str, str]:
    """(common head, the system-only middle, the no-system middle, common tail) of the two
    renderings: the parts where they differ become {{ if .System }} ... {{ else }} ..."""
    n = 0
    while n < min(len(plain), len(with_system)) and plain[n] == with_system[n]:
        n += 1
    limit = min(len(plain), len(with_system)) - n
    k = 0
    while k < limit and plain[-1 - k] == with_system[-1 - k]:
        k += 1
    # Never cut a placeholder in two: shrink the common parts to its edge.
    for text in (plain, with_system):
        start = _inside_placeholder(text, n)
        n = start if start is not None else n
    for text in (plain, with_system):
        start = _inside_placeholder(text, len(text) - k)
        if start is not None:
            k = len(text) - start - len(next(p for p in ACTIONS if text.startswith(p, start)))
    return (
        plain[:n],
        with_system[n : len(with_system) - k],
        plain[n : len(plain) - k],
        plain[len(plain) - k :],
    )


def special_texts(tokenizer) -> set[str]:
    return set(tokenizer.all_special_tokens) | {
        t.content for t in tokenizer.added_tokens_decoder.values() if t.special
    }


def derive(tokenizer, strip_bos: bool = False) -> GoTemplate:
    """The tokenizer's chat template as an Ollama (Go) template, and the stop strings: EOS and
    the special tokens that end an assistant turn."""
    eos = tokenizer.eos_token
    stops = [eos] if eos else []
    if not tokenizer.chat_template:
        return GoTemplate(None, stops, ["the tokenizer has no chat template"])
    user = [{"role": "user", "content": PROMPT}]
    notes = []
    plain = _render(tokenizer, user, True, strip_bos)
    try:
        with_system = _render(
            tokenizer, [{"role": "system", "content": SYSTEM}, *user], True, strip_bos
        )
    except Exception as err:  # templates that refuse a system message (raise_exception)
        with_system = None
        notes.append(f"the chat template takes no system message ({err}); none in the template")
    if with_system is not None and SYSTEM not in with_system:
        notes.append("the chat template drops a system message; none in the template")
        with_system = None
    if PROMPT not in plain:
        return GoTemplate(None, stops, ["the chat template does not show the user's message"])

    # What closes an assistant turn: the text after the reply in a complete conversation.
    reply = [*user, {"role": "assistant", "content": RESPONSE}]
    try:
        complete = _render(tokenizer, reply, False, strip_bos)
        end_of_turn = complete.split(RESPONSE, 1)[1].strip() if RESPONSE in complete else ""
    except Exception as err:
        end_of_turn = ""
        notes.append(f"the chat template cannot render a reply ({err})")
    end_of_turn = end_of_turn or (eos or "")
    specials = special_texts(tokenizer)
    stops += [t for t in sorted(specials) if t in end_of_turn and t not in stops]

    if with_system is None:
        prompt_part = _go(plain)
    else:
        head, system_part, default_part, tail = _split_system(plain, with_system)
        prompt_part = _go(head) + "{{ if .System }}" + _go(system_part)
        if default_part:  # a default system text the template adds when none is given
            prompt_part += "{{ else }}" + _go(default_part)
        prompt_part += "{{ end }}" + _go(tail)
    text = prompt_part + "{{ .Response }}" + _literal(end_of_turn)
    if '"""' in text:
        return GoTemplate(None, stops, ['the template contains """, which a Modelfile cannot hold'])
    problem = _mismatch(tokenizer, text, with_system is not None, strip_bos)
    if problem:
        return GoTemplate(
            None, stops, [*notes, f"not expressible as an Ollama template: {problem}"]
        )
    return GoTemplate(text, stops, notes)


def render_go(template: str, system: str = "", prompt: str = "", response: str = "") -> str:
    """Render the Go-template subset `derive` writes: {{ .System }}, {{ .Prompt }},
    {{ .Response }}, {{ if .System }}..{{ else }}..{{ end }} and {{ "{{" }}."""
    values = {".System": system, ".Prompt": prompt, ".Response": response}
    out: list[str] = []
    stack: list[bool] = []  # per open if: is its current branch being written
    pos = 0
    for action in re.finditer(r"\{\{\s*(.*?)\s*\}\}", template):
        if all(stack):
            out.append(template[pos : action.start()])
        pos = action.end()
        word = action.group(1)
        if word == "if .System":
            stack.append(bool(system))
        elif word == "else":
            stack[-1] = not stack[-1]
        elif word == "end":
            stack.pop()
        elif all(stack):
            if word in values:
                out.append(values[word])
            elif word == '"{{"':
                out.append("{{")
            else:
                raise ModelfileError(f"unsupported template action {{{{ {word} }}}}")
    if stack:
        raise ModelfileError("unclosed {{ if }} in the template")
    out.append(template[pos:])
    return "".join(out)


def _mismatch(tokenizer, template: str, has_system: bool, strip_bos: bool) -> str | None:
    """Render the prompt part of the Go template (up to the reply) and the Jinja template with
    other messages; describe a difference, or None when they agree."""
    prompt_part = template.rsplit("{{ .Response }}", 1)[0]
    cases = [("", "What is 2 + 2?")]
    if has_system:
        cases.append(("Answer briefly.", "Name a colour."))
    for system, prompt in cases:
        messages = [{"role": "user", "content": prompt}]
        if system:
            messages.insert(0, {"role": "system", "content": system})
        want = _render(tokenizer, messages, True, strip_bos)
        got = render_go(prompt_part, system, prompt)
        if got != want:
            return f"with system {system!r}: {got!r} != {want!r}"
    return None


def modelfile_text(gguf_name: str, template: GoTemplate, header: str = "") -> str:
    """Ollama Modelfile text: FROM the GGUF beside it, TEMPLATE, one PARAMETER stop each."""
    lines = [f"# {line}" if line else "#" for line in header.splitlines()]
    lines.append(f"FROM ./{gguf_name}")
    if template.text is not None:
        lines.append(f'TEMPLATE """{template.text}"""')
    for note in template.notes:
        lines.append(f"# note: {note}")
    for stop in template.stops:
        escaped = stop.replace("\\", "\\\\").replace('"', '\\"')
        lines.append(f'PARAMETER stop "{escaped}"')
    return "\n".join(lines) + "\n"


def parse_modelfile(text: str) -> dict:
    """The instructions of a Modelfile (FROM, TEMPLATE, PARAMETER ...), comments skipped:
    what tests and the export's own check read back."""
    parsed: dict = {"FROM": None, "TEMPLATE": None, "PARAMETER": []}
    pos = 0
    instruction = re.compile(r'([A-Z]+) (?:"""((?s:.*?))"""|([^\n]*))\n')
    while pos < len(text):
        if text.startswith("#", pos):
            pos = text.index("\n", pos) + 1
            continue
        found = instruction.match(text, pos)
        if not found:
            raise ModelfileError(f"cannot parse the Modelfile at {text[pos : pos + 40]!r}")
        name, block, line = found.groups()
        value = block if block is not None else line
        if name == "PARAMETER":
            key, _, argument = value.partition(" ")
            if len(argument) >= 2 and argument[0] == argument[-1] == '"':
                argument = re.sub(r"\\(.)", r"\1", argument[1:-1])
            parsed["PARAMETER"].append((key, argument))
        elif name in ("FROM", "TEMPLATE"):
            parsed[name] = value
        else:
            raise ModelfileError(f"unexpected instruction {name}")
        pos = found.end()
    return parsed
