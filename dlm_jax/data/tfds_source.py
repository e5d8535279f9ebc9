"""TFDS catalog datasets as a corpus (`tfds:NAME[/CONFIG][:SPLIT]`), read as array_record
without TensorFlow. The only source that imports tensorflow_datasets."""

import difflib
import os
import socket

import tensorflow_datasets as tfds

from dlm_jax.data.sources import Split, no_progress
from dlm_jax.errors import UserError

# The text feature of the TFDS catalog datasets we name in the docs; others default to "text".
TFDS_TEXT_FEATURES = {"lm1b": "text", "wiki40b": "text", "c4": "text", "pg19": "book_text", "tiny_shakespeare": "text"}


def tfds_source(name_spec, split):
    """-> (Split of the records of `split` (or the spec's own), "tfds:FULL_NAME:SPLIT")."""
    name, _, spec_split = name_spec.partition(":")
    split = spec_split or split
    import tensorflow_datasets.text  # noqa: F401  (registers c4, wiki40b and the other text datasets)

    base, _, config = name.partition("/")
    known = sorted(set(tfds.list_builders(with_community_datasets=False)))
    if base not in known:
        close = difflib.get_close_matches(base, known, n=3, cutoff=0.6) or list(TFDS_TEXT_FEATURES)
        raise UserError(f"no TFDS dataset named {base!r}; did you mean {', '.join('tfds:' + c for c in close)}?")
    configs = [c.name for c in tfds.builder_cls(base).BUILDER_CONFIGS]
    if config and config not in configs:
        close = difflib.get_close_matches(config, configs, n=5, cutoff=0.3) or configs[:5]
        raise UserError(f"tfds:{base} has no config {config!r}; try {', '.join(f'tfds:{base}/{c}' for c in close)}")
    # tfds reads TFDS_DATA_DIR once at import; read it now so a later setting counts.
    builder = tfds.builder(name, data_dir=os.environ.get("TFDS_DATA_DIR"), file_format="array_record")
    feature = TFDS_TEXT_FEATURES.get(base, "text")
    if feature not in builder.info.features:
        raise UserError(f"tfds:{name} has no {feature!r} text feature; dlm-jax reads text datasets only")
    if not builder.is_prepared():
        if os.environ.get("DLM_JAX_OFFLINE") or not _online():
            raise UserError(
                f"tfds:{name} is not downloaded in {builder.data_dir} and this machine is "
                "offline; prepare it once on a connected machine (file_format=array_record) "
                "and set TFDS_DATA_DIR"
            )
        try:
            builder.download_and_prepare()
        except Exception as err:  # noqa: BLE001  (most generators need TensorFlow; downloads fail)
            raise UserError(
                f"tfds:{name} is not prepared in {builder.data_dir} and preparing it here failed "
                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}); "
                "prepare it once where tensorflow is installed (file_format='array_record', "
                "see docs/data.md) and point "
                "TFDS_DATA_DIR at it"
            ) from None
    if builder.info.file_format != tfds.core.file_adapters.FileFormat.ARRAY_RECORD:
        raise UserError(
            f"tfds:{name} in {builder.data_dir} is stored as {builder.info.file_format.value}; "
            "dlm-jax reads array_record (no TensorFlow): prepare it with file_format=array_record"
        )
    if split.split("[")[0] not in builder.info.splits:
        raise UserError(f"tfds:{name} has no split {split!r}; it has {', '.join(builder.info.splits)}")
    records = builder.as_data_source(split)

    def documents(progress=no_progress):
        for record in records:
            text = record[feature]
            progress(1)
            yield [text.decode("utf-8") if isinstance(text, bytes) else text]

    return Split(documents, len(records), "doc"), f"tfds:{builder.info.full_name}:{split}"


def _online(host="storage.googleapis.com") -> bool:
    """A quick probe: tfds retries a failed download for minutes before it gives up.
    DLM_JAX_OFFLINE=1 (set by the tests) skips it and treats the machine as offline."""
    try:
        socket.create_connection((host, 443), timeout=5).close()
        return True
    except OSError:
        return False
