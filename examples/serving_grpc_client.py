"""Ask TF Serving for translations over gRPC (port 8500), with tensorflow-serving-api.

    python examples/serving_grpc_client.py --model g2p_en attention seq2seq
"""

import argparse

import grpc
import tensorflow as tf
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc


def make_request(model, texts, signature="serving_default"):
    """A PredictRequest with the `text` input set to `texts`."""
    request = predict_pb2.PredictRequest()
    request.model_spec.name = model
    request.model_spec.signature_name = signature
    request.inputs["text"].CopyFrom(tf.make_tensor_proto(list(texts), dtype=tf.string))
    return request


def predict(target, model, texts, signature="serving_default", timeout=60):
    """Returns the outputs as numpy arrays, keyed by output name."""
    with grpc.insecure_channel(target) as channel:
        stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
        response = stub.Predict(make_request(model, texts, signature), timeout=timeout)
    return {name: tf.make_ndarray(proto) for name, proto in response.outputs.items()}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("texts", nargs="+")
    parser.add_argument("--target", default="localhost:8500")
    parser.add_argument("--model", required=True)
    parser.add_argument("--beam", action="store_true", help="use the beam_search signature")
    args = parser.parse_args()
    outputs = predict(args.target, args.model, args.texts,
                      "beam_search" if args.beam else "serving_default")
    for text, translation, score in zip(args.texts, outputs["translation"], outputs["score"]):
        print(f"{text} -> {translation.decode('utf-8')}  (score {score:.3f})")


if __name__ == "__main__":
    main()
