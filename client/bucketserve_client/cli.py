"""bucketserve-client: send prompts to a BucketServe server.

    bucketserve-client generate "Tell me a story" --stream --max-tokens 64
    bucketserve-client generate "Hi" --protocol http --url http://127.0.0.1:8000
    bucketserve-client batch prompts.txt --concurrency 8       # one prompt a line, or JSONL
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from .client import FIELD_DTYPES, GenerationResult, make_client


def _add_request_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--protocol", choices=("grpc", "http"), default="grpc")
    p.add_argument("--url", help="server address (default: 127.0.0.1:8001 for grpc, http://127.0.0.1:8000 for http)")
    p.add_argument("--model", default="bucketserve", help="model name in the repository (default: bucketserve)")
    p.add_argument("--max-tokens", type=int)
    p.add_argument("--class", dest="request_class", choices=("online", "offline"))
    p.add_argument("--temperature", type=float)
    p.add_argument("--top-k", type=int)
    p.add_argument("--top-p", type=float)
    p.add_argument("--seed", type=int)
    p.add_argument("--stop", action="append", help="stop string (repeatable)")
    p.add_argument("--ignore-eos", action="store_true", default=None)
    p.add_argument("--min-tokens", type=int)
    p.add_argument("--slo-ttft-ms", type=float)
    p.add_argument("--slo-tpot-ms", type=float)
    p.add_argument("--chat", dest="apply_chat_template", action="store_true", default=None,
                   help="wrap the prompt in the model's chat template (instruct models answer questions then)")


def _options(args: argparse.Namespace) -> dict:
    names = ("temperature", "top_k", "top_p", "seed", "stop", "ignore_eos", "min_tokens", "slo_ttft_ms", "slo_tpot_ms",
             "apply_chat_template")
    return {n: getattr(args, n) for n in names if getattr(args, n) is not None}


def _summary(r: GenerationResult) -> str:
    ms = lambda s: "-" if s is None else f"{s * 1000:.1f} ms"  # noqa: E731
    if not r.ok:
        return f"[{r.status}: {r.error_code or ''} {r.error or ''}]".replace(" ]", "]")
    return (f"[finish {r.finish_reason}, {r.num_input_tokens} prompt + {r.num_output_tokens} generated tokens, "
            f"TTFT {ms(r.ttft_s)}, TPOT {ms(r.tpot_s)}, total {ms(r.e2e_s)}]")


def cmd_generate(args: argparse.Namespace) -> int:
    client = make_client(args.protocol, args.url, args.model)
    printed = []

    def on_delta(text: str) -> None:
        printed.append(text)
        sys.stdout.write(text)
        sys.stdout.flush()

    result = client.generate(args.prompt, stream=args.stream, max_tokens=args.max_tokens, request_class=args.request_class,
                             on_delta=on_delta, **_options(args))
    if printed:
        sys.stdout.write("\n")
    print(_summary(result), file=sys.stderr)
    return 0 if result.ok else 1


def _read_prompts(path: str) -> list[dict]:
    """One prompt a line; a line that is a JSON object gives the prompt ("prompt" or
    "text_input") and per-request fields (max_tokens, request_class, ...)."""
    items = []
    with (sys.stdin if path == "-" else open(path, encoding="utf-8")) as f:
        for line in f:
            line = line.rstrip("\n")
            if not line.strip():
                continue
            if line.lstrip().startswith("{"):
                obj = json.loads(line)
                prompt = obj.pop("prompt", None) or obj.pop("text_input")
                items.append({"prompt": prompt, **{k: v for k, v in obj.items() if k in FIELD_DTYPES}})
            else:
                items.append({"prompt": line})
    return items


def cmd_batch(args: argparse.Namespace) -> int:
    items = _read_prompts(args.file)
    client = make_client(args.protocol, args.url, args.model)
    defaults = {"max_tokens": args.max_tokens, "request_class": args.request_class, **_options(args)}

    def run(i_item):
        i, item = i_item
        fields = {k: v for k, v in defaults.items() if v is not None}
        fields.update({k: v for k, v in item.items() if k != "prompt"})
        fields.pop("stream", None)
        return i, item["prompt"], client.generate(item["prompt"], stream=args.stream, **fields)

    start = time.perf_counter()
    ok = 0
    with ThreadPoolExecutor(max_workers=max(1, args.concurrency)) as pool:
        for i, prompt, r in pool.map(run, enumerate(items)):
            ok += r.ok
            print(json.dumps({"index": i, "prompt": prompt, "text": r.text, "status": r.status, "error": r.error,
                              "finish_reason": r.finish_reason, "num_input_tokens": r.num_input_tokens,
                              "num_output_tokens": r.num_output_tokens, "ttft_s": r.ttft_s, "tpot_s": r.tpot_s,
                              "e2e_s": r.e2e_s}, ensure_ascii=False), flush=True)
    elapsed = time.perf_counter() - start
    print(f"[{ok}/{len(items)} ok in {elapsed:.1f} s, concurrency {args.concurrency}]", file=sys.stderr)
    return 0 if ok == len(items) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bucketserve-client", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    g = sub.add_parser("generate", help="send one prompt; print the text as it arrives, then TTFT / TPOT")
    g.add_argument("prompt")
    g.add_argument("--stream", action="store_true", help="stream the text (gRPC stream or HTTP generate_stream)")
    _add_request_args(g)
    g.set_defaults(fn=cmd_generate)
    b = sub.add_parser("batch", help="send every prompt of a file concurrently; print one JSON line per answer")
    b.add_argument("file", help="prompts, one a line, or JSONL objects with a prompt and fields; - for stdin")
    b.add_argument("--concurrency", type=int, default=8)
    b.add_argument("--stream", action="store_true")
    _add_request_args(b)
    b.set_defaults(fn=cmd_batch)
    args = parser.parse_args(argv)
    try:
        return args.fn(args)
    except KeyboardInterrupt:
        return 130
    except (ConnectionError, OSError) as exc:
        print(f"bucketserve-client: cannot reach the server: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
