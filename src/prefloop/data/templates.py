"""Rendering prompts and completions to text with a chat template.

Conversational prompts go through the tokenizer's own chat template when it has one, else through
`DEFAULT_CHAT_TEMPLATE`, which renders each turn as `{Role}: {content}\\n` and the generation prompt as
`Assistant:`. So the conversational prompt `[{"role": "user", "content": "What is 3 plus 4?"}]` renders to
the standard-form prompt `"User: What is 3 plus 4?\\nAssistant:"`, and the assistant message `"7."` to the
completion `" 7."`: both forms give the same text and the same tokens.
"""

from __future__ import annotations

from typing import Any

# `capitalize` turns user/assistant/system/tool into User/Assistant/System/Tool. The turn text is
# "Assistant: " + content, so a completion (the text after the "Assistant:" generation prompt) starts
# with a space, like the standard-form completions of DESIGN.md.
DEFAULT_CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- message['role'] | capitalize }}: {{ message['content'] }}{{ '\\n' }}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- 'Assistant:' }}{%- endif -%}"
)


def _apply(tokenizer: Any, messages: list[dict], add_generation_prompt: bool) -> str:
    template = None if getattr(tokenizer, "chat_template", None) else DEFAULT_CHAT_TEMPLATE
    return tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                         add_generation_prompt=add_generation_prompt)


def render_prompt(tokenizer: Any, prompt: str | list[dict]) -> str:
    """The text the policy continues: a text prompt as it is, a conversation rendered with the chat
    template and the generation prompt (the opening of the assistant's turn)."""
    if isinstance(prompt, str):
        return prompt
    return _apply(tokenizer, prompt, add_generation_prompt=True)


def render_completion(tokenizer: Any, prompt: str | list[dict], completion: str | list[dict]) -> str:
    """The text that follows `render_prompt(tokenizer, prompt)`, without the EOS (added at tokenisation).

    After a text prompt the completion is text and passes through. After a conversational prompt a text
    completion is the assistant's message content; it (or a list of messages) is rendered as the rest
    of the conversation, and the completion is what the full rendering adds after the rendered prompt.

    End of the assistant's turn: the EOS token ends every completion, so whatever the template writes
    after the turn that the EOS replaces is cut: first one trailing newline when the message content
    itself does not end with one (the default template's turn separator, ChatML's "\\n" after
    `<|im_end|>`), then the EOS token's text if the template ends turns with it (ChatML or Llama 3 chat
    models whose EOS is the end-of-turn token), so it is not doubled. Other end-of-turn markers stay in
    the completion and the model learns to write them before the EOS.

    Raises ValueError when the template is not prefix-consistent (the rendered prompt is not a prefix of
    the rendered conversation), since the completion then has no well-defined text.
    """
    if isinstance(prompt, str):
        if not isinstance(completion, str):
            raise ValueError("a text prompt needs a text completion, got a list of messages")
        return completion
    turns = [{"role": "assistant", "content": completion}] if isinstance(completion, str) else completion
    rendered_prompt = render_prompt(tokenizer, prompt)
    full = _apply(tokenizer, [*prompt, *turns], add_generation_prompt=False)
    if not full.startswith(rendered_prompt):
        raise ValueError(
            "the chat template is not prefix-consistent: the prompt rendered with add_generation_prompt=True "
            f"({rendered_prompt[-40:]!r} at its end) is not a prefix of the rendered conversation, so the "
            "completion text is undefined; use a template whose generation prompt opens the assistant turn")
    suffix = full[len(rendered_prompt):]
    if suffix.endswith("\n") and not turns[-1]["content"].endswith("\n"):
        suffix = suffix[:-1]
    eos = getattr(tokenizer, "eos_token", None)
    if eos and suffix.endswith(eos) and not turns[-1]["content"].endswith(eos):
        suffix = suffix[:-len(eos)]
    return suffix
