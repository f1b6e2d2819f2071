"""Turn Hugging Face checkpoints into ONNX models in the Bento model store.

``python -m export onnx`` exports one checkpoint, ``python -m export ensure`` imports every
``ort`` model of a registry profile that the store lacks, ``python -m export list`` shows the
store. Modules: ``commands/`` (one per command; ``__main__`` only parses and dispatches),
``sources`` (source string -> local folder), ``onnx_text`` (text encoder -> ONNX + parity check +
tokenizer files), ``store`` (Bento model store), ``steps`` (progress lines). Every failure the
user can fix is raised as ``ExportError`` with a message that says what to do.
"""


class ExportError(Exception):
    """An export cannot proceed; the message names the model or source and the cause."""
