"""Ask a served model for translations over TF Serving's REST API.

Works the same against `s2s-attn serve saved_models/NAME` and against TF Serving
itself (docker run ... tensorflow/serving, port 8501). Standard library only.

    python examples/serving_rest_client.py --model g2p_en attention seq2seq
    python examples/serving_rest_client.py --signature beam_search --model g2p_en hello
    python examples/serving_rest_client.py --signature sample --temperature 0.8 --seed 1 \\
        --model g2p_en hello

The `sample` signature takes four scalar inputs beside `text`. TF Serving needs every
input of a signature, so they go in the columnar format, `{"inputs": {"text": [...],
"temperature": 0.8, ...}}` (answered with `outputs`); `s2s-attn serve` also fills in the
export's defaults for those left out, and answers texts-only row requests.
"""

import argparse
import json
import urllib.error
import urllib.request

# The sample signature's scalar inputs and their defaults (keras_s2s_attn.options.SamplingOptions).
SAMPLING_INPUTS = {"temperature": 1.0, "top_k": 0, "top_p": 1.0, "seed": -1}


def post(url, model, body, timeout=60):
    request = urllib.request.Request(f"{url}/v1/models/{model}:predict",
                                     data=json.dumps(body).encode("utf-8"),
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())
    except urllib.error.HTTPError as error:
        raise SystemExit(f"{error.code}: {json.loads(error.read()).get('error')}") from None


def predict(url, model, texts, signature="serving_default", inputs=None, timeout=60):
    """A predict request; returns the list of per-text output dicts.

    Without `inputs` the row format is used; with scalar `inputs` (sampling's),
    the columnar format, whose answer is turned into rows here.
    """
    if not inputs:
        body = {"signature_name": signature, "instances": list(texts)}
        return post(url, model, body, timeout)["predictions"]
    body = {"signature_name": signature, "inputs": {"text": list(texts), **inputs}}
    columns = post(url, model, body, timeout)["outputs"]
    return [{name: values[i] for name, values in columns.items()} for i in range(len(texts))]


def show(text, row):
    print(f"{text} -> {row['translation']}  (score {row['score']:.3f}"
          f"{', input truncated' if row['truncated'] else ''})")
    for rank, (other, score) in enumerate(zip(row.get("translations", []),
                                              row.get("scores", [])), 1):
        print(f"    #{rank} {other}  ({score:.3f})")
    source = [t for t in row["source_tokens"] if t]
    target = [t for t in row["target_tokens"] if t]
    for token, weights in zip(target, row.get("attention", [])):
        peak = max(range(len(source)), key=lambda s: weights[s]) if source else None
        print(f"    {token:>8} <- {source[peak] if source else '-'}")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("texts", nargs="+")
    parser.add_argument("--url", default="http://127.0.0.1:8501")
    parser.add_argument("--model", required=True)
    parser.add_argument("--signature", default="serving_default",
                        help="serving_default (greedy), beam_search (n-best) or sample")
    parser.add_argument("--beam", dest="signature", action="store_const", const="beam_search",
                        help="the beam_search signature")
    for name, default in SAMPLING_INPUTS.items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default,
                            help=f"sample signature input (default {default})")
    args = parser.parse_args()
    inputs = ({name: getattr(args, name) for name in SAMPLING_INPUTS}
              if args.signature == "sample" else None)
    for text, row in zip(args.texts, predict(args.url, args.model, args.texts, args.signature,
                                             inputs)):
        show(text, row)


if __name__ == "__main__":
    main()
