"""Chat templates without a Jinja engine: the common ones, recognized by their markers and
rendered in Python.

A chat model expects its conversation in the exact text format it was trained on; the model
folder ships that format as a Jinja template (tokenizer_config.json's "chat_template", or
chat_template.jinja). minimoe has no Jinja engine. Instead, `apply_chat_template` looks for the
markers of the formats below and renders the same text for plain conversations (system, user and
assistant messages with string content; no tools, images or reasoning fields):

  harmony (gpt-oss)    <|start|>system<|message|>You are ChatGPT, ...<|end|>
                       <|start|>user<|message|>Hi<|end|><|start|>assistant
  ChatML (Qwen2/2.5/3) <|im_start|>user\\nHi<|im_end|>\\n<|im_start|>assistant\\n
  Llama 3 / 3.1        <|begin_of_text|><|start_header_id|>user<|end_header_id|>\\n\\nHi<|eot_id|>
                       <|start_header_id|>assistant<|end_header_id|>\\n\\n
  Mistral / Mixtral    <s>[INST] Hi [/INST]
  DeepSeek-V3 / R1     <｜begin▁of▁sentence｜><｜User｜>Hi<｜Assistant｜>

(shown here on two lines where the text has none). Any other template raises a TokenizerError
that says so: format the prompt yourself and pass it without --chat.
"""
from __future__ import annotations

import datetime
import re

from minimoe.tokenizer import TokenizerError

HARMONY_IDENTITY = "You are ChatGPT, a large language model trained by OpenAI."


def harmony(messages, add_generation_prompt=True, reasoning_effort="medium", date=None,
            model_identity=HARMONY_IDENTITY, template=""):
    """gpt-oss's harmony format. Every message is <|start|>{role}<|message|>{text}<|end|>; the
    system message is fixed (identity, knowledge cutoff, today's date, reasoning effort, the
    channels); a leading system or developer message becomes the developer's "# Instructions".
    Earlier assistant replies are shown on the final channel (their reasoning is dropped)."""
    date = date or datetime.date.today().strftime("%Y-%m-%d")
    out = ["<|start|>system<|message|>", model_identity, "\n",
           "Knowledge cutoff: 2024-06\n", f"Current date: {date}\n\n",
           f"Reasoning: {reasoning_effort}\n\n",
           "# Valid channels: analysis, commentary, final. Channel must be included for every message.",
           "<|end|>"]
    if messages and messages[0]["role"] in ("system", "developer"):
        # some releases of the template end the instructions with a blank line
        tail = "\n\n" if re.search(r'developer_message\s*}}\s*{{-?\s*"\\n\\n"', template) else ""
        out += ["<|start|>developer<|message|># Instructions\n\n", messages[0]["content"], tail, "<|end|>"]
        messages = messages[1:]
    for k, m in enumerate(messages):
        if m["role"] == "user":
            out += ["<|start|>user<|message|>", m["content"], "<|end|>"]
        elif m["role"] == "assistant":
            last = k == len(messages) - 1 and not add_generation_prompt
            out += ["<|start|>assistant<|channel|>final<|message|>", m["content"],
                    "<|return|>" if last else "<|end|>"]
        else:
            raise TokenizerError(f"harmony chat template: role {m['role']!r} is not supported here "
                                 f"(system or developer first, then user and assistant)")
    if add_generation_prompt:
        out.append("<|start|>assistant")
    return "".join(out)


def chatml(messages, add_generation_prompt=True, template=""):
    """Qwen's ChatML: <|im_start|>{role}\\n{text}<|im_end|>\\n per message. Templates that write a
    default system message (Qwen2.5: "You are Qwen, created by Alibaba Cloud. ...") get it when
    the conversation has none."""
    default = re.search(r"<\|im_start\|>system\\n([^'\"{}<\\]+)<\|im_end\|>", template)
    if default and (not messages or messages[0]["role"] != "system"):
        messages = [{"role": "system", "content": default.group(1)}] + list(messages)
    out = [f"<|im_start|>{m['role']}\n{m['content']}<|im_end|>\n" for m in messages]
    if add_generation_prompt:
        out.append("<|im_start|>assistant\n")
    return "".join(out)


def llama3(messages, add_generation_prompt=True, bos="<|begin_of_text|>", template="",
           date_string="26 Jul 2024"):
    """Llama 3: <|start_header_id|>{role}<|end_header_id|>\\n\\n{text, trimmed}<|eot_id|>. Llama 3.1
    and later always open with a system message that gives the knowledge cutoff and a date (the
    template's default date is "26 Jul 2024")."""
    out = [bos]
    if "Cutting Knowledge Date" in template:
        system = ""
        if messages and messages[0]["role"] == "system":
            system, messages = messages[0]["content"].strip(), messages[1:]
        out.append("<|start_header_id|>system<|end_header_id|>\n\n"
                   f"Cutting Knowledge Date: December 2023\nToday Date: {date_string}\n\n{system}<|eot_id|>")
    for m in messages:
        out.append(f"<|start_header_id|>{m['role']}<|end_header_id|>\n\n{m['content'].strip()}<|eot_id|>")
    if add_generation_prompt:
        out.append("<|start_header_id|>assistant<|end_header_id|>\n\n")
    return "".join(out)


def mistral_inst(messages, add_generation_prompt=True, bos="<s>", eos="</s>", template=""):
    """Mistral/Mixtral-Instruct v0.1: <s>[INST] {user} [/INST]{assistant}</s>[INST] ... Roles must
    alternate user/assistant; the model answers after [/INST] whatever add_generation_prompt is."""
    out = [bos]
    for k, m in enumerate(messages):
        if (m["role"] == "user") != (k % 2 == 0):
            raise TokenizerError("Mistral chat template: roles must alternate user/assistant/user/... "
                                 "(this template has no system role)")
        out.append(f"[INST] {m['content']} [/INST]" if m["role"] == "user" else m["content"] + eos)
    return "".join(out)


def deepseek(messages, add_generation_prompt=True, bos="<｜begin▁of▁sentence｜>", eos="<｜end▁of▁sentence｜>",
             template=""):
    """DeepSeek-V3: BOS, the system prompts, then <｜User｜>{text} and <｜Assistant｜>{text}<｜end▁of▁sentence｜>.
    R1's template opens the answer with "<think>\\n"."""
    system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
    out = [bos, system]
    for m in messages:
        if m["role"] == "user":
            out.append("<｜User｜>" + m["content"])
        elif m["role"] == "assistant":
            out.append("<｜Assistant｜>" + m["content"] + eos)
        elif m["role"] != "system":
            raise TokenizerError(f"DeepSeek chat template: role {m['role']!r} is not supported here")
    if add_generation_prompt:
        out.append("<｜Assistant｜>" + ("<think>\n" if "<｜Assistant｜><think>\\n" in template else ""))
    return "".join(out)


# (name, markers that must all be in the template, renderer)
FORMATS = [
    ("harmony", ("<|start|>", "<|channel|>", "<|message|>"), harmony),
    ("chatml", ("<|im_start|>", "<|im_end|>"), chatml),
    ("llama3", ("<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"), llama3),
    ("deepseek", ("<｜User｜>", "<｜Assistant｜>"), deepseek),
    ("mistral", ("[INST]", "[/INST]"), mistral_inst),
]


def recognize(template: str | None) -> str | None:
    """The name of the format a Jinja chat template writes, or None."""
    for name, markers, _ in FORMATS:
        if template and all(m in template for m in markers):
            return name
    return None


def apply_chat_template(tokenizer, messages, add_generation_prompt: bool = True, **options) -> str:
    """messages [{"role": "user", "content": "Hi"}, ...] -> the prompt text, in the format of the
    tokenizer's chat template. Encode it with add_special_tokens=False: it holds its own BOS."""
    template = getattr(tokenizer, "chat_template", None)
    source = getattr(tokenizer, "source", "tokenizer")
    if not template:
        raise TokenizerError(f"{source}: this tokenizer has no chat template (none in "
                             f"tokenizer_config.json, chat_template.jinja or chat_template.json)")
    name = recognize(template)
    if name is None:
        raise TokenizerError(f"{source}: this chat template needs a Jinja engine, which minimoe does "
                             f"not include; it renders harmony (gpt-oss), ChatML (Qwen), Llama 3, "
                             f"Mistral [INST] and DeepSeek templates. Format the prompt yourself and "
                             f"pass it without --chat")
    for m in messages:
        if not isinstance(m, dict) or not isinstance(m.get("content"), str) or "role" not in m:
            raise TokenizerError(f"chat messages must be {{'role': ..., 'content': str}}, found {m!r}")
    render = {n: f for n, _, f in FORMATS}[name]
    kwargs = dict(options)
    if name in ("llama3", "mistral", "deepseek") and getattr(tokenizer, "bos_token", None):
        kwargs.setdefault("bos", tokenizer.bos_token)
    if name in ("mistral", "deepseek") and getattr(tokenizer, "eos_token", None):
        kwargs.setdefault("eos", tokenizer.eos_token)
    return render(messages, add_generation_prompt, template=template, **kwargs)


# the tokens after which a chat model's turn is over, by format
END_OF_TURN = {"harmony": ("<|return|>", "<|call|>"), "chatml": ("<|im_end|>",),
               "llama3": ("<|eot_id|>",), "deepseek": ("<｜end▁of▁sentence｜>",), "mistral": ("</s>",)}
