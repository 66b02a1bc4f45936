"""The TF Serving layout of exported models: `saved_models/NAME/<version>/`.

Read by translation, serving and the export alike (nothing here imports
them): which version directories there are, the files an export writes
beside its SavedModel, and loading one::

    saved_models/NAME/1/saved_model.pb
                        variables/...
                        assets/vocab.txt ...
                        assets.extra/tf_serving_warmup_requests
                        assets.extra/s2s_attn.json        (EXPORT_INFO_FILE)
                        assets.extra/source_tokenizer/    (TOKENIZER_DIRS)
                        assets.extra/target_tokenizer/
"""

import json
import os
import re

import tensorflow as tf

WARMUP_FILE = os.path.join("assets.extra", "tf_serving_warmup_requests")
# What was fixed at export time (beam width, lengths), for tools reading the SavedModel.
EXPORT_INFO_FILE = os.path.join("assets.extra", "s2s_attn.json")
# The tokenizers as `Tokenizer.save` writes them, for tools that need the model's
# units (evaluate's PER); the graph itself reads its vocabularies from assets/.
TOKENIZER_DIRS = {"source": os.path.join("assets.extra", "source_tokenizer"),
                  "target": os.path.join("assets.extra", "target_tokenizer")}
# A version directory's name: a decimal integer of at most 18 digits (an int64, as
# TF Serving's versions), without leading zeros.
_VERSION_NAME = re.compile(r"0|[1-9][0-9]{0,17}")


def versions(export_dir):
    """The integer version directories under `export_dir`, ascending.

    Only names in ASCII digits are versions, as in TF Serving (`str.isdigit`
    also accepts `²` or `٣`, which `int` refuses), of at most 18 digits. A
    name with leading zeros (`007`) is skipped too: TF Serving would read
    version 7 from it, but its path is not `str(7)`.
    """
    if not os.path.isdir(export_dir):
        return []
    return sorted(int(name) for name in os.listdir(export_dir)
                  if _VERSION_NAME.fullmatch(name)
                  and os.path.isdir(os.path.join(export_dir, name)))



def load_saved_model(path):
    """`tf.saved_model.load` with tensorflow-text's ops registered (NFKC, subwords)."""
    import tensorflow_text  # noqa: F401  (registers the custom ops the graph may use)

    return tf.saved_model.load(os.fspath(path))


def latest_version_dir(path):
    """A version directory: `path` itself if it holds a SavedModel, else its highest version."""
    path = os.fspath(path)
    if os.path.exists(os.path.join(path, "saved_model.pb")):
        return path
    found = versions(path)
    if not found:
        raise FileNotFoundError(f"No SavedModel at {path!r} and no version directory "
                                "(1/, 2/, ...) under it.")
    return os.path.join(path, str(found[-1]))


def load_exported_tokenizer(version_dir, side):
    """The `"source"` or `"target"` tokenizer saved with an export, or None for an
    export that predates them (exports before December 2026)."""
    from keras_s2s_attn.text import load_tokenizer

    path = os.path.join(version_dir, TOKENIZER_DIRS[side])
    return load_tokenizer(path) if os.path.isdir(path) else None


def read_export_info(version_dir):
    """The settings fixed at export (`Translator.settings()`), or {} for other SavedModels."""
    path = os.path.join(version_dir, EXPORT_INFO_FILE)
    if not os.path.exists(path):
        return {}
    with open(path) as handle:
        return json.load(handle)


def exported_strategies(version_dir):
    """`{signature: (strategy name, options)}` of an export, from its info file.

    Exports from before the strategies (their info has `beam_width`, no
    `signatures`) had greedy `serving_default` and a 1-best `beam_search`.
    """
    info = read_export_info(version_dir)
    if "signatures" in info:
        return {name: (entry["strategy"], entry["options"])
                for name, entry in info["signatures"].items()}
    if "beam_width" not in info:
        return {"serving_default": ("greedy", {})}
    beam = {"beam_width": info["beam_width"], "num_results": 1,
            "length_penalty_weight": info.get("length_penalty_weight", 0.0),
            "coverage_penalty_weight": info.get("coverage_penalty_weight", 0.0)}
    return {"serving_default": ("greedy", {}), "beam_search": ("beam", beam)}
