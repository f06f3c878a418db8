"""`hybridlm generate`: text from a run, streamed (`--prompt`), as a conversation (`--interactive`), or for a
file of prompts in batches written as JSONL (`--prompts-file`).

On CUDA the model runs in bf16 by default (what the decode step's memory traffic wants); on the CPU in
float32. Decoding itself lives in `hybridlm.model` (decoder, conversation, sampling).
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

import torch

from hybridlm.errors import HybridLMError
from hybridlm.train.precision import resolve_device

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


class PromptsFileError(HybridLMError, ValueError):
    """The prompts file is missing or a line of it cannot be read."""


@dataclass(frozen=True)
class Options:
    """The sampling settings every mode shares."""

    max_new_tokens: int = 200
    temperature: float = 0.8
    top_k: int | None = 50
    top_p: float | None = None
    repetition_penalty: float = 1.0
    seed: int | None = None

    def sampling(self):
        from hybridlm.model.sampling import Sampling

        try:
            return Sampling(self.temperature, self.top_k, self.top_p, self.repetition_penalty)
        except ValueError as exc:
            raise HybridLMError(str(exc)) from None


def load_for_generation(run: str, checkpoint: str = "best", device: str = "auto", dtype: str = "auto"):
    """(model, tokenizer) of a run on `device`, cast to `dtype` (auto: bfloat16 on CUDA, else float32)."""
    from hybridlm.runs import load_run

    dev = resolve_device(device)
    if dtype == "auto":
        dtype = "bfloat16" if dev.type == "cuda" else "float32"
    if dtype not in DTYPES:
        raise HybridLMError(f"--dtype must be auto or one of {', '.join(DTYPES)}, got {dtype!r}")
    model, tokenizer = load_run(run, checkpoint=checkpoint, device=dev)
    return model.to(DTYPES[dtype]), tokenizer


class TextStream:
    """Writes the text of a growing list of token ids as it grows (holding back a partial character)."""

    def __init__(self, tokenizer, out):
        self.tokenizer, self.out = tokenizer, out
        self.ids: list[int] = []
        self.shown = ""

    def add(self, token_id: int) -> str:
        self.ids.append(token_id)
        text = self.tokenizer.decode(self.ids)
        if not text.endswith("\ufffd"):  # wait for the rest of a multi-byte character
            self.out.write(text[len(self.shown):])
            self.out.flush()
            self.shown = text
        return text

    def close(self) -> str:
        text = self.tokenizer.decode(self.ids)
        self.out.write(text[len(self.shown):])
        self.out.flush()
        return text


def stream_text(run: str, prompt: str, checkpoint: str = "best", max_new_tokens: int = 200,
                temperature: float = 0.8, top_k: int | None = 50, top_p: float | None = None,
                seed: int | None = None, device: str = "auto", out=None, repetition_penalty: float = 1.0,
                dtype: str = "auto") -> str:
    """Print `prompt` and its continuation piece by piece; return the continuation."""
    from hybridlm.model.generation import decoder_for

    out = out or sys.stdout
    options = Options(max_new_tokens, temperature, top_k, top_p, repetition_penalty, seed)
    model, tokenizer = load_for_generation(run, checkpoint, device, dtype)
    ids = tokenizer.encode(prompt) if prompt else [tokenizer.eos_id]
    out.write(prompt)
    out.flush()
    text = TextStream(tokenizer, out)
    for token in decoder_for(model).stream([ids], max_new_tokens, options.sampling(), tokenizer.eos_id, seed):
        token_id = int(token[0])
        if token_id == tokenizer.eos_id:
            break
        text.add(token_id)
    continuation = text.close()
    out.write("\n")
    out.flush()
    return continuation


def chat(run: str, checkpoint: str = "best", options: Options = Options(), device: str = "auto",
         dtype: str = "auto", stop: str | None = None, prompt: str = "", stdin=None, out=None) -> int:
    """Read a line, continue the conversation after it, repeat until end of input; the decoding state is
    kept between turns, so a turn costs only its own tokens. A reply ends at eos, after max_new_tokens, or
    once it contains `stop`. Returns the number of turns."""
    from hybridlm.model.conversation import Conversation
    from hybridlm.model.generation import decoder_for

    stdin, out = stdin or sys.stdin, out or sys.stdout
    model, tokenizer = load_for_generation(run, checkpoint, device, dtype)
    conversation = Conversation(decoder_for(model), options.sampling(), tokenizer.eos_id, options.seed,
                                options.max_new_tokens)
    interactive = stdin.isatty()
    turns = 0
    pending = prompt
    while True:
        if interactive:
            out.write("> ")
            out.flush()
        line = stdin.readline()
        if not line:
            break
        text_in = pending + line
        pending = ""
        ids = tokenizer.encode(text_in)
        if not ids:
            continue
        turns += 1
        text = TextStream(tokenizer, out)
        for token_id in conversation.reply(ids):
            shown = text.add(token_id)
            if stop is not None and stop in shown:
                break
        reply = text.close()
        if not reply.endswith("\n"):
            out.write("\n")
        out.flush()
    return turns


def read_prompts(path: str | Path) -> list[dict]:
    """Prompts from a file: JSONL lines holding at least {"prompt": text} (other fields are copied to the
    output), or plain text with one prompt per non-empty line."""
    path = Path(path)
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        raise PromptsFileError(f"prompts file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise PromptsFileError(f"prompts file {path} cannot be read ({exc})") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        if path.suffix != ".jsonl":
            records.append({"prompt": line})
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError as exc:
            raise PromptsFileError(f"{path} line {number} is not JSON ({exc.msg})") from None
        if not isinstance(record, dict) or not isinstance(record.get("prompt"), str):
            raise PromptsFileError(f'{path} line {number} has no "prompt" string')
        records.append(record)
    if not records:
        raise PromptsFileError(f"prompts file {path} holds no prompts")
    return records


def generate_file(run: str, prompts_file: str, out_file: str | None = None, batch_size: int = 32,
                  checkpoint: str = "best", options: Options = Options(), device: str = "auto",
                  dtype: str = "auto", out=None) -> int:
    """Continue every prompt of `prompts_file`, `batch_size` at a time; one JSON line per prompt, in the
    file's order ({..., "prompt", "completion", "tokens", "stop": "eos" | "length"}) to `out_file` (written
    whole at the end) or to stdout. Returns the number of prompts."""
    from hybridlm.model.generation import generate_batch

    if batch_size < 1:
        raise HybridLMError(f"--batch-size must be at least 1, got {batch_size}")
    records = read_prompts(prompts_file)
    sampling = options.sampling()
    model, tokenizer = load_for_generation(run, checkpoint, device, dtype)
    prompts = [tokenizer.encode(r["prompt"]) or [tokenizer.eos_id] for r in records]
    results = generate_batch(model, prompts, options.max_new_tokens, sampling, tokenizer.eos_id, options.seed,
                             batch_size=batch_size)
    lines = [json.dumps({**record, "completion": tokenizer.decode(result.tokens), "tokens": len(result.tokens),
                         "stop": result.stop}, ensure_ascii=False)
             for record, result in zip(records, results)]
    if out_file is None:
        stream = out or sys.stdout
        stream.write("".join(line + "\n" for line in lines))
        stream.flush()
    else:
        from hybridlm.atomic_write import write_text_atomic

        write_text_atomic(out_file, "".join(line + "\n" for line in lines))
    return len(records)
