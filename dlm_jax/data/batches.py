"""Batches of packed records: the shuffled, resumable training stream of each host, and the
in-order batches of evaluation."""

import sys

import numpy as np
from tqdm import tqdm

from dlm_jax.errors import UserError


class BatchIterator:
    """Endless global batches in a shuffled order that is a function of (seed, epoch) only.

    Each epoch is a fresh permutation of the sequences, cut into len // global_batch_size batches
    (the remainder waits for a later epoch's permutation). Host `process_index` of
    `process_count` gets rows [i * local, (i + 1) * local) of each global batch and reads only
    those.
    """

    def __init__(self, dataset, global_batch_size: int, *, seed: int, process_index: int = 0, process_count: int = 1):
        if global_batch_size % process_count:
            raise UserError(
                f"global batch size {global_batch_size} does not split over "
                f"{process_count} hosts; use a multiple of {process_count}"
            )
        if len(dataset) < global_batch_size:
            raise UserError(
                f"the corpus has {len(dataset)} sequences of {dataset.seq_len} tokens but one "
                f"batch needs {global_batch_size}; use more text, a smaller batch or a shorter "
                "seq_len"
            )
        self.dataset, self.global_batch_size, self.seed = dataset, global_batch_size, seed
        self.local_batch_size = global_batch_size // process_count
        self.process_index = process_index
        self.batches_per_epoch = len(dataset) // global_batch_size
        self.epoch, self.batch_in_epoch = 0, 0
        self._order = None

    def __iter__(self):
        return self

    def __next__(self) -> dict:
        if self.batch_in_epoch == self.batches_per_epoch:
            self.epoch, self.batch_in_epoch, self._order = self.epoch + 1, 0, None
        if self._order is None:
            self._order = np.random.default_rng([self.seed, self.epoch]).permutation(len(self.dataset))
        start = self.batch_in_epoch * self.global_batch_size + self.process_index * self.local_batch_size
        self.batch_in_epoch += 1
        return self.dataset.rows(self._order[start : start + self.local_batch_size])

    def get_state(self) -> dict:
        return {
            "epoch": self.epoch,
            "batch_in_epoch": self.batch_in_epoch,
            "seed": self.seed,
            "num_sequences": len(self.dataset),
            "global_batch_size": self.global_batch_size,
        }

    def set_state(self, state: dict) -> None:
        mine = self.get_state()
        for key in ("seed", "num_sequences", "global_batch_size"):
            if state[key] != mine[key]:
                raise UserError(
                    f"the saved data position is for {key}={state[key]} but this run has "
                    f"{mine[key]}; resume with the same data, seed and batch size"
                )
        self.epoch, self.batch_in_epoch, self._order = (state["epoch"], state["batch_in_epoch"], None)


def batches_in_order(dataset, batch_size, max_sequences=None, *, desc=None):
    """(first index, input_ids [B, L], prompt_mask [B, L], valid rows) over the first
    max_sequences records of `dataset` (anything with len() and [i] -> a record), in order; the
    last batch repeats its last row so every batch has one shape. `desc` names a progress bar
    over the sequences (shown on a terminal only)."""
    count = len(dataset) if max_sequences is None else min(len(dataset), max_sequences)
    with tqdm(total=count, unit="seq", desc=desc, file=sys.stderr, disable=None) as bar:
        for start in range(0, count, batch_size):
            rows = [dataset[i] for i in range(start, min(start + batch_size, count))]
            valid = len(rows)
            rows += [rows[-1]] * (batch_size - valid)
            ids = np.stack([np.asarray(r["input_ids"], np.int32) for r in rows])
            prompt = np.stack([np.asarray(r["prompt_mask"], bool) for r in rows])
            yield start, ids, prompt, valid
            bar.update(valid)
