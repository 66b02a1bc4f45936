"""Rebuild the run directories of the shipped G2P ensemble from `saved_models/g2p_en/3`.

The three members of v3 (see the README's G2P section) were trained on a
machine whose run directories are gone; their weights live on in the
SavedModel, stored as float16. This script rebuilds each member as a run
directory (config.json, both tokenizers, best.keras) so that the normal
`s2s-attn export` can export them again, e.g. with newer signatures (v3 itself
is in the git history since v4 replaced it):

    git archive f55d5be saved_models/g2p_en/3 | tar -x
    python examples/g2p_runs_from_v3.py --out runs/v3
    s2s-attn export runs/v3/a runs/v3/b runs/v3/c --name g2p_en \\
        --beam-width 4 --max-source-length 40 --weights-dtype float16

The SavedModel keeps its variables in a list whose order says nothing about
the models, so each variable is identified by where the graph uses it: the
name scope of the first layer op reading it (`encoder_3/bidirectional_1_1/
forward_gru_1_1/gru_cell_1/MatMul_1` is member b's second encoder layer's
forward recurrent kernel). The rebuilt ensemble is then checked against v3:
the same translations and scores on the given words (`--check`).

The source tokenizer records the lower-casing its training words had (every
word of the CMUdict split is lower-case): v3's tokenizer did not, so a
capitalised word was read as unknown characters. That is the one change.
"""

import argparse
import collections
import json
import os
import re

import numpy as np

V3 = os.path.join("saved_models", "g2p_en", "3")
# The members: name, bidirectional encoder layers, training dropout, name-scope
# suffix in v3's graph.
MEMBERS = (("a", 1, 0.1, "1"), ("b", 2, 0.2, "3"), ("c", 1, 0.1, "5"))
MODEL = {"embedding_dim": 64, "units": 192, "decoder_layers": 1, "cell_type": "gru",
         "attention": "additive", "style": "bahdanau", "input_feeding": True, "window": None,
         "window_mode": "local-p", "normalize_attention": False}
GRU_WEIGHTS = {"MatMul": "kernel", "MatMul_1": "recurrent_kernel", "split": "bias"}
# Scope patterns of the first op that reads each weight -> (member suffix, weight path).
PATTERNS = [
    (r"^encoder_(\d)/embedding_1/GatherV2$", lambda m: "encoder/embedding/embeddings"),
    (r"^encoder_(\d)/bidirectional_(\d)_1/(forward|backward)_gru_\d_1/gru_cell_1/"
     r"(MatMul|MatMul_1|split)$",
     lambda m: f"encoder/bidirectional_{m[2]}/{m[3]}_gru_{m[2]}/gru_cell/"
               f"{GRU_WEIGHTS[m[4]]}"),
    (r"^bridge_(\d)/state_0_1/(MatMul|BiasAdd)$",
     lambda m: "bridge/state_0/" + ("kernel" if m[2] == "MatMul" else "bias")),
    (r"^while/target_embedding_(\d)/GatherV2$", lambda m: "target_embedding/embeddings"),
    (r"^while/decoder_cell_(\d)/attention_1/Tensordot/MatMul$",
     lambda m: "decoder/decoder_cell/attention/query_kernel"),
    (r"^while/decoder_cell_(\d)/attention_1/mul$", lambda m: "decoder/decoder_cell/attention/v"),
    (r"^while/decoder_cell_(\d)/gru_cell_0_1/(MatMul|MatMul_1|split)$",
     lambda m: f"decoder/decoder_cell/gru_cell_0/{GRU_WEIGHTS[m[2]]}"),
    (r"^while/output_projection_(\d)/(MatMul|BiasAdd)$",
     lambda m: "output_projection/" + ("kernel" if m[2] == "MatMul" else "bias")),
]
# The memory projections run once per member before the loop, in member order.
MEMORY_KERNELS = {"Tensordot/MatMul": "1", "Tensordot_1/MatMul": "3", "Tensordot_2/MatMul": "5"}
PASS_THROUGH = re.compile(r"(ReadVariableOp|Cast|Identity|NoOp)(_\d+)?$")


def first_layer_ops(library, function, argument, depth=0):
    """Names of the ops that read `argument` in `function`, through while and call ops."""
    consumers = collections.defaultdict(list)
    for node in function.node_def:
        for position, source in enumerate(node.input):
            consumers[source.split(":")[0].lstrip("^")].append((node, position))
    found, frontier, seen = [], [argument], set()
    while frontier and not found:
        following = []
        for name in frontier:
            for node, position in consumers.get(name, []):
                if node.name in seen:
                    continue
                seen.add(node.name)
                attribute = {"While": "body", "StatelessWhile": "body",
                             "StatefulPartitionedCall": "f", "PartitionedCall": "f"}.get(node.op)
                if attribute and depth < 3:
                    inner = library[node.attr[attribute].func.name]
                    found += first_layer_ops(library, inner,
                                             inner.signature.input_arg[position].name, depth + 1)
                elif PASS_THROUGH.search(node.name):
                    following.append(node.name)
                else:
                    found.append(node.name)
        frontier = following
    return found


def identify(name):
    """(member suffix, weight path) of an op name, or None."""
    if name in MEMORY_KERNELS:
        return MEMORY_KERNELS[name], "decoder/decoder_cell/attention/memory_kernel"
    for pattern, path in PATTERNS:
        match = re.match(pattern, name)
        if match:
            return match[1], path(match)
    return None


def stored_weights(saved_model):
    """{(member suffix, weight path): float32 array} for every variable of v3."""
    function = saved_model.signatures["serving_default"]
    graph = function.graph.as_graph_def()
    library = {f.signature.name: f for f in graph.library.function}
    call = next(node for node in graph.node if node.op == "StatefulPartitionedCall")
    inner = library[call.attr["f"].func.name]
    placeholders = {internal.name.split(":")[0]: external
                    for external, internal in function.graph.captures}
    weights = {}
    for position, source in enumerate(call.input):
        handle = placeholders.get(source.split(":")[0])
        variable = next((v for v in saved_model._all_variables if v.handle is handle), None)
        if variable is None:
            continue
        names = first_layer_ops(library, inner, inner.signature.input_arg[position].name)
        keys = {key for key in map(identify, names) if key}
        if len(keys) != 1:
            raise ValueError(f"Cannot tell which weight {variable.name} is: {names[:4]}")
        weights[keys.pop()] = variable.numpy().astype(np.float32)
    return weights


def write_run(directory, model, source_tokenizer, target_tokenizer, options, v3):
    from keras_s2s_attn.runs import BEST_MODEL, CONFIG_FILE, SOURCE_VOCAB, TARGET_VOCAB

    os.makedirs(directory, exist_ok=True)
    source_tokenizer.save(os.path.join(directory, SOURCE_VOCAB))
    target_tokenizer.save(os.path.join(directory, TARGET_VOCAB))
    model.save(os.path.join(directory, BEST_MODEL))
    config = {"source_tokenizer": "char", "target_tokenizer": "space", "max_source_length": 40,
              "model": {**MODEL, **options},
              "source_vocab_size": source_tokenizer.vocabulary_size,
              "target_vocab_size": target_tokenizer.vocabulary_size,
              "rebuilt_from": v3}
    with open(os.path.join(directory, CONFIG_FILE), "w") as handle:
        json.dump(config, handle, indent=2)


def rebuild(v3, out):
    """Writes out/a, out/b, out/c from the SavedModel `v3`; returns the models and tokenizers."""
    from keras_s2s_attn import build_seq2seq_model
    from keras_s2s_attn.saved_models import load_saved_model
    from keras_s2s_attn.text import make_tokenizer
    from keras_s2s_attn.text._base import read_vocabulary_file

    assets = os.path.join(v3, "assets")
    # v3's assets: vocab.txt is the target (phones), vocab.txt_1 the source (letters).
    source = make_tokenizer("char", lower=True,
                            vocabulary=read_vocabulary_file(os.path.join(assets, "vocab.txt_1")))
    target = make_tokenizer("space",
                            vocabulary=read_vocabulary_file(os.path.join(assets, "vocab.txt")))
    weights = stored_weights(load_saved_model(v3))
    models = []
    for name, layers, dropout, suffix in MEMBERS:
        options = {"encoder_layers": layers, "dropout": dropout}
        model = build_seq2seq_model(source.vocabulary_size, target.vocabulary_size,
                                    **MODEL, **options)
        model.set_weights([weights.pop((suffix, w.path)) for w in model.weights])
        write_run(os.path.join(out, name), model, source, target, options, v3)
        models.append(model)
    if weights:
        raise ValueError(f"Weights of v3 left unused: {sorted(weights)}")
    return models, source, target


def check(v3_path, models, source, target, words):
    """The rebuilt ensemble must answer as v3 does, greedy and beam."""
    import tensorflow as tf

    from keras_s2s_attn.decoding import get_strategy
    from keras_s2s_attn.saved_models import exported_strategies, load_saved_model
    from keras_s2s_attn.translation import Translator

    strategies = {signature: get_strategy(name, **options)
                  for signature, (name, options) in exported_strategies(v3_path).items()}
    translator = Translator(models, source, target, max_source_length=40,
                            strategies=strategies)
    v3 = load_saved_model(v3_path)
    for signature in ("serving_default", "beam_search"):
        mine = translator(words, signature)
        theirs = v3.signatures[signature](text=tf.constant(words))
        same = mine["translation"] == theirs["translation"].numpy()
        gap = np.abs(mine["score"] - theirs["score"].numpy()).max()
        print(f"{signature}: {same.sum()}/{len(words)} translations equal, "
              f"largest score difference {gap:.2e}")
        if not same.all() or gap > 1e-3:
            raise SystemExit("The rebuilt ensemble differs from v3.")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--v3", default=V3, help=f"the v3 SavedModel (default {V3})")
    parser.add_argument("--out", default=os.path.join("runs", "v3"))
    parser.add_argument("--check", metavar="PAIRS.tsv",
                        help="compare with v3 on the sources of this file (e.g. "
                             "data/cmudict/dev.tsv)")
    args = parser.parse_args()
    models, source, target = rebuild(args.v3, args.out)
    print(f"wrote {', '.join(os.path.join(args.out, m[0]) for m in MEMBERS)}")
    if args.check:
        from keras_s2s_attn.data import read_pairs

        check(args.v3, models, source, target, read_pairs(args.check)[0])


if __name__ == "__main__":
    main()
