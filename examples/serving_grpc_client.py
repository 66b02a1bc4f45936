"""Ask TF Serving for translations over gRPC (port 8500), with tensorflow-serving-api.

    python examples/serving_grpc_client.py --model g2p_en attention seq2seq
    python examples/serving_grpc_client.py --signature beam_search --model g2p_en hello
    python examples/serving_grpc_client.py --signature sample --temperature 0.8 --seed 1 \\
        --model g2p_en hello

A PredictRequest names the signature and carries every input the signature takes:
`text` always, and for `sample` the scalars `temperature`, `top_k`, `top_p` and `seed`.
`output_filter` asks for fewer outputs (e.g. only `translations` and `scores`).
"""

import argparse

import grpc
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

# The sample signature's scalar inputs: (dtype, default) (keras_s2s_attn.options.SamplingOptions).
SAMPLING_INPUTS = {"temperature": (tf.float32, 1.0), "top_k": (tf.int32, 0),
                   "top_p": (tf.float32, 1.0), "seed": (tf.int32, -1)}


def make_request(model, texts, signature="serving_default", inputs=None, output_filter=()):
    """A PredictRequest with `text` set to `texts` and the scalar `inputs` (name: value)."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    request.inputs["text"].CopyFrom(tf.make_tensor_proto(list(texts), dtype=tf.string))
    for name, value in (inputs or {}).items():
        request.inputs[name].CopyFrom(tf.make_tensor_proto(value,
                                                           dtype=SAMPLING_INPUTS[name][0]))
    request.output_filter.extend(output_filter)
    return request


def predict(target, model, texts, signature="serving_default", inputs=None, timeout=60):
    """Returns the outputs as numpy arrays, keyed by output name."""
    with grpc.insecure_channel(target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(make_request(model, texts, signature, inputs), timeout=timeout)
    return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("texts", nargs="+")
    parser.add_argument("--target", default="localhost:8500")
    parser.add_argument("--model", required=True)
    parser.add_argument("--signature", default="serving_default",
                        help="serving_default (greedy), beam_search (n-best) or sample")
    parser.add_argument("--beam", dest="signature", action="store_const", const="beam_search",
                        help="the beam_search signature")
    for name, (_, default) in SAMPLING_INPUTS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default,
                            help=f"sample signature input (default {default})")
    args = parser.parse_args()
    inputs = ({name: getattr(args, name) for name in SAMPLING_INPUTS}
              if args.signature == "sample" else None)
    outputs = predict(args.target, args.model, args.texts, args.signature, inputs)
    for i, (text, translation, score) in enumerate(zip(args.texts, outputs["translation"],
                                                      outputs["score"])):
        print(f"{text} -> {translation.decode('utf-8')}  (score {score:.3f})")
        if "translations" in outputs:
            for rank, (other, other_score) in enumerate(zip(outputs["translations"][i],
                                                            outputs["scores"][i]), 1):
                print(f"    #{rank} {other.decode('utf-8')}  ({other_score:.3f})")


if __name__ == "__main__":
    main()
