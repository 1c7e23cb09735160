"""Writes reference.json: what Hugging Face transformers renders for each chat template here.

The Rust tests in src/chat_template.rs render the same templates with the same inputs and
compare byte for byte, so the expected strings come from real Jinja2 as transformers drives it
(`transformers.utils.chat_template_utils.render_jinja_template`), never from reasoning.

    HF_HUB_OFFLINE=1 /work/cache/export-venv/bin/python render_reference.py

Run it from any directory; it writes next to itself. `strftime_now` is pinned to FIXED_NOW so
templates that print today's date (Llama 3.2, gpt-oss) render the same on every day; the Rust
tests pin their clock to the same instant.
"""

import datetime as _datetime
import json
import pathlib
import sys

import jinja2
import transformers
from transformers.utils import chat_template_utils

HERE = pathlib.Path(__file__).resolve().parent
FIXED_NOW = _datetime.datetime(2025, 3, 7, 9, 5, 3)


class _FixedDatetime(_datetime.datetime):
    @classmethod
    def now(cls, tz=None):
        return FIXED_NOW


# transformers' strftime_now reads the module-level `datetime` name when called.
chat_template_utils.datetime = _FixedDatetime

SYSTEM = {"role": "system", "content": "You are a helpful assistant."}
CONVERSATIONS = {
    "user_only": [{"role": "user", "content": "What is 2+2?"}],
    "system_user": [SYSTEM, {"role": "user", "content": "Hello!"}],
    "multi_turn": [
        SYSTEM,
        {"role": "user", "content": "  Hi there  "},
        {"role": "assistant", "content": "Hello! How can I help?\n"},
        {"role": "user", "content": "Tell me a joke."},
    ],
    "ends_with_assistant": [
        {"role": "user", "content": "Say hi."},
        {"role": "assistant", "content": "Hi!"},
    ],
    "unicode": [
        {"role": "system", "content": "Réponds en français, s'il te plaît."},
        {"role": "user", "content": "Café, 漢字 and an emoji 🎉 — \"quoted\" \\ back\tslash"},
        {"role": "assistant", "content": "Très bien ✨ 汉字"},
        {"role": "user", "content": "Encore 🚀?"},
    ],
    "reasoning": [
        {"role": "user", "content": "Is 7 prime?"},
        {"role": "assistant", "content": "<think>\nDivisors of 7: only 1 and 7.\n</think>\n\nYes, 7 is prime."},
        {"role": "user", "content": "And 9?"},
    ],
    "not_alternating": [
        {"role": "user", "content": "first"},
        {"role": "user", "content": "second"},
    ],
    "tool_without_call": [
        {"role": "user", "content": "What's the weather?"},
        {"role": "tool", "content": "sunny"},
    ],
    "empty": [],
}

# (path relative to this folder, bos_token, eos_token); the tokens are the model's own.
TEMPLATES = [
    ("templates/Qwen-Qwen2.5-7B-Instruct.jinja", "", "<|im_end|>"),
    ("templates/Qwen-Qwen3-0.6B.jinja", "", "<|im_end|>"),
    ("templates/meta-llama-Meta-Llama-3-8B-Instruct.jinja", "<|begin_of_text|>", "<|eot_id|>"),
    ("templates/meta-llama-Llama-3.1-8B-Instruct.jinja", "<|begin_of_text|>", "<|eot_id|>"),
    ("templates/meta-llama-Llama-3.2-3B-Instruct.jinja", "<|begin_of_text|>", "<|eot_id|>"),
    ("templates/mistralai-Mistral-Nemo-Instruct-2407.jinja", "<s>", "</s>"),
    ("templates/google-gemma-2-2b-it.jinja", "<bos>", "<eos>"),
    ("templates/microsoft-Phi-3.5-mini-instruct.jinja", "<s>", "<|endoftext|>"),
    ("templates/deepseek-ai-DeepSeek-R1-Distill-Qwen-32B.jinja", "<｜begin▁of▁sentence｜>", "<｜end▁of▁sentence｜>"),
    ("model_dirs/gpt-oss-20b/chat_template.jinja", "<|startoftext|>", "<|return|>"),
]

# Model folders, loaded the way transformers' tokenizer loads them: `chat_template.jinja` wins over
# tokenizer_config.json's `chat_template`; a list of {name, template} becomes a dict and "default"
# is used; bos/eos are strings or AddedToken objects whose `content` is the token. The Rust tests
# load the same folders with `ChatTemplate::from_model_dir`.
MODEL_DIRS = [
    "model_dirs/gpt-oss-20b",
    "model_dirs/phi-3.5-moe-instruct",
    "model_dirs/llama-2-chat-list-form",
    "../../../../../tests/fixtures/tiny-moe",
]


def load_model_dir(folder):
    config = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    jinja = folder / "chat_template.jinja"
    if jinja.exists():
        source = jinja.read_text(encoding="utf-8")
    else:
        source = config["chat_template"]
        if isinstance(source, list):
            source = {t["name"]: t["template"] for t in source}["default"]

    def token(key):
        value = config.get(key)
        if isinstance(value, dict):
            value = value["content"]
        return value or ""

    return source, token("bos_token"), token("eos_token")

# Small synthetic templates that pin down one behaviour each (Python formatting of values,
# tojson, string methods, undefined handling, whitespace control). They see the same context
# as a chat template: messages, add_generation_prompt, bos_token, eos_token, tools, documents.
PROBES = {
    "python_str_of_values": "{{ none }}|{{ true }}|{{ false }}|{{ tools }}|{{ [1, 'a', none, true, 2.5] }}|{{ {'k': 'v', 'n': none} }}|{{ 1.0 }}|{{ 1e20 }}|{{ 0.00001 }}|{{ 10 / 4 }}|{{ 7 // 2 }}",
    "string_filter_and_concat": "{{ none | string }}|{{ true | string }}|{{ 'a' ~ 'b' ~ 3 }}",
    "tojson_message": "{{ messages[0] | tojson }}",
    "tojson_messages_indent": "{{ messages | tojson(indent=2) }}",
    "tojson_values": "{{ [1, 2.5, none, true, false, 'é\"\\\\\n\t\u0001'] | tojson }}|{{ 'x' | tojson(ensure_ascii=true) }}|{{ '漢🎉' | tojson(ensure_ascii=true) }}",
    "tojson_sort_keys_separators": "{{ messages[0] | tojson(sort_keys=true) }}|{{ messages[0] | tojson(separators=(',', ':')) }}|{{ [] | tojson(indent=2) }}|{{ [[]] | tojson(indent=0) }}",
    "string_methods": "{% set c = messages[-1].content %}{{ c.strip() }}|{{ c.upper() }}|{{ c.lower() }}|{{ c.title() }}|{{ c.startswith('What') }}|{{ c.endswith('?') }}|{{ c.split() }}|{{ c.split(' ', 1) }}|{{ c.replace('2', 'two') }}|{{ c.find('+') }}|{{ '  x\\n'.rstrip() }}|{{ 'a,b'.split(',')[-1] }}",
    "dict_access": "{% for m in messages %}{{ m.role }}={{ m['content'] }}|{{ m.get('name') }}|{{ m.get('name', 'anon') }}|{{ 'content' in m }}|{{ m.name is defined }}|{% for k, v in m.items() %}{{ k }};{% endfor %}\n{% endfor %}",
    "undefined_renders_empty": "[{{ missing }}][{{ messages[0].nope }}][{{ messages[5] }}]{% if not messages[0].nope %}falsy{% endif %}{{ missing | length }}{% for x in missing %}x{% endfor %}",
    "undefined_attribute_of_undefined": "{{ messages[5]['role'] }}",
    "loop_controls": "{% for m in messages %}{% if m.role == 'system' %}{% continue %}{% endif %}{% if loop.index > 3 %}{% break %}{% endif %}{{ loop.index0 }}:{{ m.role }}{{ ',' if not loop.last }}{% endfor %}",
    "namespace_and_slices": "{% set ns = namespace(count=0, roles='') %}{% for m in messages[::-1] %}{% set ns.count = ns.count + 1 %}{% set ns.roles = ns.roles + m.role[:1] %}{% endfor %}{{ ns.count }} {{ ns.roles }} {{ messages[1:] | length }} {{ (messages | map(attribute='role') | list) }} {{ messages | selectattr('role', 'equalto', 'user') | list | length }}",
    "whitespace_control": "  {% for m in messages %}\n    <{{ m.role }}>\n  {% endfor %}\n{%- if add_generation_prompt %}\n  gen\n{% endif %}\n\n",
    "raise_exception": "{% if messages | length > 0 %}{{ raise_exception('Rôle \"' + messages[0].role + '\" refusé') }}{% endif %}ok",
    "strftime_now": "{{ strftime_now('%Y-%m-%d %H:%M:%S') }}|{{ strftime_now('%d %b %Y') }}|{{ strftime_now('%A %B %j %y %I%p %-d %%') }}",
    "arithmetic": "{{ 3 / 2 }}|{{ 4 / 2 }}|{{ 2 ** 10 }}|{{ 10 % 3 }}|{{ -7 // 2 }}|{{ 1 + 2.0 }}|{{ messages | length * 2 }}",
    "tests": "{{ none is none }}{{ 'a' is string }}{{ 1 is number }}{{ messages is sequence }}{{ messages is iterable }}{{ messages is mapping }}{{ (messages[0] is mapping) if messages else 'n/a' }}{{ 3 is odd }}{{ 4 is even }}{{ 4 is divisibleby 2 }}{{ 'a' is lower }}{{ true is boolean }}{{ false is false }}",
    "loop_variables": "{% for m in messages %}{{ loop.index }}/{{ loop.revindex }}/{{ loop.length }}/{{ loop.cycle('odd', 'even') }}/{{ loop.previtem.role if loop.previtem is defined else '-' }}/{{ loop.nextitem.role if loop.nextitem is defined else '-' }};{% else %}no messages{% endfor %}",
    "filters": "{{ messages | map(attribute='role') | join(',') }}|{{ messages | map(attribute='role') | unique | list | length }}|{{ messages | selectattr('role', 'equalto', 'user') | map(attribute='content') | first | default('none', true) }}|{{ 'abc' | capitalize }}|{{ 'a-b' | replace('-', '+') }}|{{ '  pad ' | trim }}|{{ [3, 1, 2] | sort | list }}|{{ [1, 2, 3] | sum }}|{{ '42' | int + 1 }}|{{ 2.567 | round(1) }}|{{ [1, 2, 3] | reverse | list }}|{{ '<b>&' | e }}",
    "concat_none_and_bools": "{{ 'x' ~ none ~ true }}",
    "join_none": "{{ [1, none, true] | join(',') }}",
    "string_repeat": "{{ 'ab' * 2 }}",
    "undefined_plus_one": "{{ missing + 1 }}",
    "list_append_is_refused": "{% set xs = [] %}{{ xs.append(1) }}{{ xs }}",
    "slices_and_indexing": "{{ 'abcdef'[::-1] }}|{{ 'abcdef'[1:-1] }}|{{ [1, 2, 3][5] }}|{{ (messages | last).role if messages else '' }}|{{ messages[-1].content[:4] if messages else '' }}|{{ (1, 2) }}|{{ ('solo',) }}",
    "block_set_and_filter_block": "{% set body %}{% for m in messages %}{{ m.role }} {% endfor %}{% endset %}[{{ body | trim }}]{% filter upper %}{{ bos_token }}x{% endfilter %}",
    "whitespace_markers": "a\n  {%+ if true %}b{% endif %}\n  {{- ' c ' -}}\n  d\n{%- if true %}\n e\n{%- endif %}",
    "string_format_methods": "{{ '{} and {}'.format('a', 'b') }}|{{ 'a,b,,c'.split(',') }}|{{ 'x\ny'.splitlines() }}|{{ 'Hi'.lower().startswith(('h', 'x')) }}|{{ 'abc'.count('b') }}|{{ 'ab'.isalpha() }}|{{ '12'.isdigit() }}|{{ ' '.join(['a', 'b']) }}|{{ 'aXbXc'.replace('X', '-', 1) }}|{{ 'hello world'.capitalize() }}",
    "dict_global_and_membership": "{% set d = dict(role='user', content='x') %}{{ d.role }}|{{ 'role' in d }}|{{ 'zz' in d }}|{{ d | length }}|{{ 'a' in ['a', 'b'] }}|{{ 'ell' in 'hello' }}|{{ messages[0] == messages[0] if messages else 'n/a' }}",
    "macros_and_call": "{% macro wrap(role, content='?') %}<{{ role }}:{{ content }}>{% endmacro %}{% for m in messages %}{{ wrap(m.role, content=m.content | upper) }}{% endfor %}{{ wrap('end') }}",
    "generation_tag": "{% for m in messages %}{% if m.role == 'assistant' %}\n  {% generation %}\n  [{{ m.content }}]\n  {%- endgeneration %}\n{% else %}({{ m.content }}){% endif %}{% endfor %}",
    "bos_eos": "{{ bos_token }}|{{ eos_token }}|{{ add_generation_prompt }}|{{ documents }}|{{ tools is none }}",
    # Dict literals keep their insertion order (minijinja's `preserve_order`).
    "dict_literal_key_order": "{{ {'b': 1, 'a': 2} | tojson }}|{{ {'b': 1, 'a': 2} }}",
}
PROBE_TOKENS = ("<s>", "</s>")

# Behaviours where this renderer is known to differ from transformers. They are recorded with
# transformers' output so the difference is visible; the Rust test checks they still differ (and
# says so when one starts to match, so it can move to PROBES).
KNOWN_DIVERGENCES = {
    # minijinja has no printf-style `%` on strings.
    "percent_format": "{{ '%s-%d' % ('a', 3) }}",
    # Filters minijinja does not have.
    "center_filter": "{{ 'x' | center(5) }}",
    "wordcount_filter": "{{ 'a b c' | wordcount }}",
    # Python's str.strip() also strips the ASCII separators \x1c-\x1f; Rust's trim does not.
    "strip_ascii_separators": "{{ '\\x1fx\\x1f'.strip() | length }}",
}


def render(source, bos, eos, messages, add_generation_prompt):
    try:
        rendered, _ = chat_template_utils.render_jinja_template(
            conversations=[messages],
            chat_template=source,
            add_generation_prompt=add_generation_prompt,
            bos_token=bos,
            eos_token=eos,
        )
        return {"output": rendered[0]}
    except Exception as e:
        # raise_exception raises exactly jinja2's TemplateError; Jinja's own errors
        # (UndefinedError, SecurityError) are subclasses, and Python's (TypeError) are not.
        return {"error": {"type": type(e).__name__, "message": str(e)}}


def main():
    cases = []
    for path, bos, eos in TEMPLATES:
        source = (HERE / path).read_text(encoding="utf-8")
        for conversation, messages in CONVERSATIONS.items():
            for add_generation_prompt in (True, False):
                case = {
                    "template": path,
                    "bos_token": bos,
                    "eos_token": eos,
                    "conversation": conversation,
                    "add_generation_prompt": add_generation_prompt,
                }
                case.update(render(source, bos, eos, messages, add_generation_prompt))
                cases.append(case)
    for model_dir in MODEL_DIRS:
        source, bos, eos = load_model_dir(HERE / model_dir)
        for conversation, messages in CONVERSATIONS.items():
            for add_generation_prompt in (True, False):
                case = {
                    "model_dir": model_dir,
                    "bos_token": bos,
                    "eos_token": eos,
                    "conversation": conversation,
                    "add_generation_prompt": add_generation_prompt,
                }
                case.update(render(source, bos, eos, messages, add_generation_prompt))
                cases.append(case)
    probe_conversations = ("user_only", "multi_turn", "unicode", "empty")
    for name, source in PROBES.items():
        for conversation in probe_conversations:
            for add_generation_prompt in (True, False):
                case = {
                    "probe": name,
                    "source": source,
                    "bos_token": PROBE_TOKENS[0],
                    "eos_token": PROBE_TOKENS[1],
                    "conversation": conversation,
                    "add_generation_prompt": add_generation_prompt,
                }
                case.update(
                    render(source, *PROBE_TOKENS, CONVERSATIONS[conversation], add_generation_prompt)
                )
                cases.append(case)
    for name, source in KNOWN_DIVERGENCES.items():
        case = {
            "probe": name,
            "known_divergence": True,
            "source": source,
            "bos_token": PROBE_TOKENS[0],
            "eos_token": PROBE_TOKENS[1],
            "conversation": "user_only",
            "add_generation_prompt": True,
        }
        case.update(render(source, *PROBE_TOKENS, CONVERSATIONS["user_only"], True))
        cases.append(case)
    reference = {
        "generated_by": "render_reference.py",
        "transformers": transformers.__version__,
        "jinja2": jinja2.__version__,
        "fixed_now": FIXED_NOW.isoformat(),
        "conversations": CONVERSATIONS,
        "cases": cases,
    }
    out = HERE / "reference.json"
    out.write_text(json.dumps(reference, ensure_ascii=False, indent=1) + "\n", encoding="utf-8")
    errors = sum(1 for c in cases if "error" in c)
    print(f"wrote {out}: {len(cases)} cases, {errors} of them errors", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
