"""Ask a served model for translations over TF Serving's REST API.

Works the same against `s2s-attn serve saved_models/NAME` and against TF Serving
itself (docker run ... tensorflow/serving, port 8501). Standard library only.

    python examples/serving_rest_client.py --model g2p_en attention seq2seq
    python examples/serving_rest_client.py --url http://localhost:8501 --beam --model g2p_en hello
"""

import argparse
import json
import urllib.error
import urllib.request


def predict(url, model, texts, signature="serving_default", timeout=60):
    """POSTs a row-format predict request; returns the list of per-text output dicts."""
    body = json.dumps({"signature_name": signature, "instances": list(texts)}).encode("utf-8")
    request = urllib.request.Request(f"{url}/v1/models/{model}:predict", data=body,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return json.loads(response.read())["predictions"]
    except urllib.error.HTTPError as error:
        raise SystemExit(f"{error.code}: {json.loads(error.read()).get('error')}") from None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("texts", nargs="+")
    parser.add_argument("--url", default="http://127.0.0.1:8501")
    parser.add_argument("--model", required=True)
    parser.add_argument("--beam", action="store_true", help="use the beam_search signature")
    args = parser.parse_args()
    rows = predict(args.url, args.model, args.texts,
                   "beam_search" if args.beam else "serving_default")
    for text, row in zip(args.texts, rows):
        source = [t for t in row["source_tokens"] if t]
        target = [t for t in row["target_tokens"] if t]
        print(f"{text} -> {row['translation']}  (score {row['score']:.3f}"
              f"{', input truncated' if row['truncated'] else ''})")
        for token, weights in zip(target, row["attention"]):
            peak = max(range(len(source)), key=lambda s: weights[s]) if source else None
            print(f"    {token:>8} <- {source[peak] if source else '-'}")


if __name__ == "__main__":
    main()
