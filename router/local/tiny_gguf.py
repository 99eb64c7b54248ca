"""Generate a tiny random-weight llama GGUF model whose outputs are structurally predictable.

The model needs no download: it is built from a seeded RNG. Its weights are shaped so that
llama.cpp behaves deterministically where tests care about it:

* completions contain printable ASCII only and never ``</s>``, so ``max_tokens=N`` always gives
  exactly N completion tokens and ``finish_reason == "length"``;
* ``temperature=0`` is repeatable;
* ``logit_bias={"2": 100}`` forces ``</s>`` and so ``finish_reason == "stop"``.

How: dimension 0 of the residual stream is a constant 1.0 (every token embedding has 1.0 there
and no layer writes into it), and ``output.weight`` has -12 in dimension 0 for every token except
the 95 printable ASCII byte tokens, which puts those tokens far below all printable ones.

Usage: ``python -m router.local.tiny_gguf OUT [--seed N] [--ctx N] [--template T] [--f32]``
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Literal

__all__ = [
    "BOS_ID",
    "EOS_ID",
    "IM_END_ID",
    "IM_START_ID",
    "N_VOCAB",
    "TEMPLATES",
    "UNK_ID",
    "write_tiny_gguf",
]

Template = Literal["tools", "chatml"]

# Architecture (llama): 2 layers, n_embd 64, 4 heads of 16 (no GQA), n_ff 128.
N_LAYER = 2
N_EMBD = 64
N_HEAD = 4
N_FF = 128
ROPE_FREQ_BASE = 10000.0
RMS_EPS = 1e-5

# Vocabulary: <unk>, <s>, </s>, 256 byte tokens, "▁", then the two ChatML control tokens.
UNK_ID, BOS_ID, EOS_ID = 0, 1, 2
BYTE0_ID = 3
SPACE_ID = BYTE0_ID + 256  # "▁", SentencePiece's whitespace marker
IM_START_ID = SPACE_ID + 1
IM_END_ID = SPACE_ID + 2
N_VOCAB = IM_END_ID + 1

# Weight scales, chosen (and stress-tested at temperature 2) so that the -12 penalty in dimension 0
# of the normalised final state stays at least ~35 logits below the best printable token.
_EMBD_STD = 0.15
_LAYER_OUT_GAIN = 0.1
_OUTPUT_STD = 0.4
_NON_PRINTABLE_PENALTY = -12.0

_CHATML_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + (message['content'] or '') + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}"
)

# ChatML with Hermes/Qwen2.5-style tool calling: renders `tools`, assistant `tool_calls` and
# `role: "tool"` messages; llama.cpp recognises the <tool_call> format and builds a grammar for it.
_TOOLS_TEMPLATE = """\
{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are a helpful assistant.' }}
    {%- endif %}
    {{- '\\n\\n# Tools\\n\\n' }}
    {{- 'You may call one or more functions to assist with the user query.\\n\\n' }}
    {{- 'You are provided with function signatures within <tools></tools> XML tags:\\n<tools>' }}
    {%- for tool in tools %}
        {{- '\\n' }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- '\\n</tools>\\n\\nFor each function call, return a json object with function name ' }}
    {{- 'and arguments within <tool_call></tool_call> XML tags:\\n<tool_call>\\n' }}
    {{- '{\"name\": <function-name>, \"arguments\": <args-json-object>}\\n' }}
    {{- '</tool_call><|im_end|>\\n' }}
{%- elif messages[0]['role'] == 'system' %}
    {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
{%- endif %}
{%- for message in messages %}
    {%- if message['role'] == 'user' or (message['role'] == 'system' and not loop.first) %}
        {{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}
    {%- elif message['role'] == 'assistant' %}
        {{- '<|im_start|>assistant' }}
        {%- if message['content'] %}
            {{- '\\n' + message['content'] }}
        {%- endif %}
        {%- if message['tool_calls'] %}
            {%- for tool_call in message['tool_calls'] %}
                {%- if tool_call['function'] is defined %}
                    {%- set tool_call = tool_call['function'] %}
                {%- endif %}
                {{- '\\n<tool_call>\\n{\"name\": \"' + tool_call['name'] + '\", \"arguments\": ' }}
                {%- if tool_call['arguments'] is string %}
                    {{- tool_call['arguments'] }}
                {%- else %}
                    {{- tool_call['arguments'] | tojson }}
                {%- endif %}
                {{- '}\\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\\n' }}
    {%- elif message['role'] == 'tool' %}
        {%- if loop.first or messages[loop.index0 - 1]['role'] != 'tool' %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' + message['content'] + '\\n</tool_response>' }}
        {%- if loop.last or messages[loop.index0 + 1]['role'] != 'tool' %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

TEMPLATES: dict[str, str] = {"tools": _TOOLS_TEMPLATE, "chatml": _CHATML_TEMPLATE}


def write_tiny_gguf(
    path: str | Path,
    *,
    seed: int = 0,
    ctx: int = 4096,
    template: Template = "tools",
    f32: bool = False,
) -> Path:
    """Write the tiny model to `path` (same seed, same bytes) and return the path."""
    import gguf  # lazy: only the `local` extra ships gguf and numpy
    import numpy as np

    if template not in TEMPLATES:
        raise ValueError(f"template must be one of {sorted(TEMPLATES)}, not {template!r}")
    if ctx < 1:
        raise ValueError(f"ctx must be positive, not {ctx}")
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    wtype = np.float32 if f32 else np.float16
    rng = np.random.default_rng(seed)

    def normal(std: float, *shape: int) -> np.ndarray:
        return rng.normal(0.0, std, size=shape).astype(np.float32)

    printable = np.zeros(N_VOCAB, dtype=bool)
    printable[BYTE0_ID + 0x20 : BYTE0_ID + 0x7F] = True  # " " .. "~": 95 tokens

    # Weight matrices are (out_features, in_features), which gguf stores as ggml's (in, out).
    tensors: list[tuple[str, np.ndarray]] = []
    token_embd = normal(_EMBD_STD, N_VOCAB, N_EMBD)
    token_embd[:, 0] = 1.0  # the constant residual dimension
    tensors.append(("token_embd.weight", token_embd))
    for i in range(N_LAYER):
        wo = normal(_LAYER_OUT_GAIN / N_EMBD**0.5, N_EMBD, N_EMBD)
        wo[0, :] = 0.0  # never write into the constant dimension
        down = normal(_LAYER_OUT_GAIN / N_FF**0.5, N_EMBD, N_FF)
        down[0, :] = 0.0
        tensors += [
            (f"blk.{i}.attn_norm.weight", np.ones(N_EMBD, dtype=np.float32)),
            (f"blk.{i}.attn_q.weight", normal(N_EMBD**-0.5, N_EMBD, N_EMBD)),
            (f"blk.{i}.attn_k.weight", normal(N_EMBD**-0.5, N_EMBD, N_EMBD)),
            (f"blk.{i}.attn_v.weight", normal(N_EMBD**-0.5, N_EMBD, N_EMBD)),
            (f"blk.{i}.attn_output.weight", wo),
            (f"blk.{i}.ffn_norm.weight", np.ones(N_EMBD, dtype=np.float32)),
            (f"blk.{i}.ffn_gate.weight", normal(N_EMBD**-0.5, N_FF, N_EMBD)),
            (f"blk.{i}.ffn_up.weight", normal(N_EMBD**-0.5, N_FF, N_EMBD)),
            (f"blk.{i}.ffn_down.weight", down),
        ]
    output = normal(_OUTPUT_STD, N_VOCAB, N_EMBD)
    output[:, 0] = np.where(printable, 0.0, _NON_PRINTABLE_PENALTY)
    tensors += [
        ("output_norm.weight", np.ones(N_EMBD, dtype=np.float32)),
        ("output.weight", output),
    ]

    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{b:02X}>" for b in range(256)]
    tokens += ["\u2581", "<|im_start|>", "<|im_end|>"]
    tt = gguf.TokenType
    types = [tt.UNKNOWN, tt.CONTROL, tt.CONTROL] + [tt.BYTE] * 256
    types += [tt.NORMAL, tt.CONTROL, tt.CONTROL]
    scores = [0.0] * N_VOCAB
    scores[SPACE_ID] = -1.0

    writer = gguf.GGUFWriter(out, "llama")
    writer.add_name(f"tiny-llama-seed{seed}")
    writer.add_context_length(ctx)
    writer.add_embedding_length(N_EMBD)
    writer.add_block_count(N_LAYER)
    writer.add_feed_forward_length(N_FF)
    writer.add_head_count(N_HEAD)
    writer.add_head_count_kv(N_HEAD)
    writer.add_rope_dimension_count(N_EMBD // N_HEAD)
    writer.add_rope_freq_base(ROPE_FREQ_BASE)
    writer.add_layer_norm_rms_eps(RMS_EPS)
    writer.add_vocab_size(N_VOCAB)
    writer.add_file_type(gguf.LlamaFileType.ALL_F32 if f32 else gguf.LlamaFileType.MOSTLY_F16)
    writer.add_tokenizer_model("llama")
    writer.add_token_list(tokens)
    writer.add_token_scores(scores)
    writer.add_token_types([int(t) for t in types])
    writer.add_unk_token_id(UNK_ID)
    writer.add_bos_token_id(BOS_ID)
    writer.add_eos_token_id(EOS_ID)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(False)
    writer.add_chat_template(TEMPLATES[template])
    for name, data in tensors:
        writer.add_tensor(name, data.astype(wtype) if data.ndim == 2 else data)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return out


def main(argv: list[str] | None = None) -> None:
    """Command-line entry point: write one tiny model and print its path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("out", type=Path, help="where to write the .gguf file")
    parser.add_argument("--seed", type=int, default=0, help="RNG seed: another seed, another model")
    parser.add_argument("--ctx", type=int, default=4096, help="llama.context_length (default 4096)")
    parser.add_argument("--template", choices=sorted(TEMPLATES), default="tools")
    parser.add_argument("--f32", action="store_true", help="store 2-D weights as F32, not F16")
    args = parser.parse_args(argv)
    print(write_tiny_gguf(args.out, seed=args.seed, ctx=args.ctx, template=args.template, f32=args.f32))


if __name__ == "__main__":
    main()
