"""Documents -> token ids -> records of exactly seq_len tokens.

All text is encoded by `tokenizer.encode_texts`, which ignores a tokenizer's own truncation and
padding: the packed tokens are the tokenizer's tokens of the whole text.
"""

import itertools

import numpy as np

from dlm_jax.data.sources import pieces_of
from dlm_jax.errors import UserError
from dlm_jax.tokenizer import encode_texts, special_token_ids

_ENCODE_BATCH = 256


def _batched(iterable, n):
    iterator = iter(iterable)
    while batch := list(itertools.islice(iterator, n)):
        yield batch


def pack(documents, tokenizer, seq_len, stats):
    """Yields (input_ids int32[seq_len], prompt_mask bool[seq_len]) records in corpus order and
    counts documents, tokens, truncated and skipped records in `stats`."""
    first = next(documents, None)
    if first is None:
        raise UserError("the corpus has no documents; give --data a file or folder with text")
    documents = itertools.chain([first], documents)
    pack_documents = _pack_pairs if isinstance(first, tuple) else _pack_texts
    yield from pack_documents(documents, tokenizer, seq_len, stats)


def _pack_texts(documents, tokenizer, seq_len, stats):
    """<s> doc </s> <s> doc </s> ... cut into full windows of seq_len; the tail is dropped."""
    ids = special_token_ids(tokenizer)
    stream = []  # pieces of text and special token ids, in order, tokenised in batches

    def flush():
        encoded = iter(encode_texts(tokenizer, [item for item in stream if isinstance(item, str)]))
        tokens = [t for item in stream for t in ([item] if isinstance(item, int) else next(encoded))]
        stream.clear()
        return tokens

    buffer = []
    for document in documents:
        if isinstance(document, tuple):
            raise UserError("the corpus mixes plain text and prompt/response records; keep them apart")
        stats["documents"] += 1
        stream.append(ids["bos"])
        for piece in pieces_of(document):
            stream.append(piece)
            if len(stream) >= _ENCODE_BATCH:
                buffer += flush()
                yield from _windows(buffer, seq_len, stats)
        stream.append(ids["eos"])
    buffer += flush()
    yield from _windows(buffer, seq_len, stats)
    stats["dropped_tail_tokens"] = len(buffer)


def _windows(buffer, seq_len, stats):
    full = len(buffer) // seq_len
    for k in range(full):
        yield (np.asarray(buffer[k * seq_len : (k + 1) * seq_len], np.int32), np.zeros(seq_len, bool))
    stats["tokens"] += full * seq_len
    del buffer[: full * seq_len]


def _pack_pairs(documents, tokenizer, seq_len, stats):
    """<s> prompt </s> response </s> padded with </s>; prompt_mask marks <s> prompt </s>.

    A response that does not fit is cut (and gets no </s>: it did not end); a prompt that leaves
    no room for one response token skips the record. Both are counted in the stats."""
    ids = special_token_ids(tokenizer)
    for batch in _batched(documents, _ENCODE_BATCH):
        if not all(isinstance(document, tuple) for document in batch):
            raise UserError("the corpus mixes plain text and prompt/response records; keep them apart")
        prompts = encode_texts(tokenizer, [prompt for prompt, _ in batch])
        responses = encode_texts(tokenizer, [response for _, response in batch])
        for prompt, response in zip(prompts, responses, strict=True):
            stats["documents"] += 1
            head, room = [ids["bos"], *prompt, ids["eos"]], seq_len - len(prompt) - 2
            if room < 1:
                stats["skipped"] += 1
                continue
            body = response + [ids["eos"]]
            if len(body) > room:
                stats["truncated"] += 1
                body = response[:room]
            input_ids = np.full(seq_len, ids["eos"], np.int32)
            input_ids[: len(head) + len(body)] = head + body
            stats["tokens"] += len(head) + len(body)
            yield input_ids, np.arange(seq_len) < len(head)
