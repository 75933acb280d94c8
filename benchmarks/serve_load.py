"""Load benchmark: N concurrent chat requests through llama-server's OpenAI-compatible API.

    python benchmarks/serve_load.py --model r1 --requests 16 --parallel 4 --max-tokens 64

Starts llama-server on 127.0.0.1 (a free port) with `--parallel` slots, or uses `--url` of a server
already running on this machine. Measures, in the same run: one request alone (the reference), then
the burst of `--requests` requests sent `--parallel` at a time. Prints success count, aggregate and
per-request tokens/s, p50/p95 latency, and the ratio burst aggregate tok/s ÷ single-request tok/s
(what parallel slots buy on this machine). Exits 1 unless every request succeeded. Results also go
to runs/serve-load-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time


def main(argv: list[str] | None = None) -> int:
    from lowbit import LowbitError
    from lowbit.paths import runs_dir
    from lowbit.serve.loadtest import print_load, run_load
    from lowbit.serve.server import start_server

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="r1", help="catalog name or GGUF path (default: the r1 replica)")
    ap.add_argument("--url", help="use this running loopback server (http://127.0.0.1:PORT/v1) instead")
    ap.add_argument("--api-key", help="key of the --url server, if it has one")
    ap.add_argument("--requests", type=int, default=16)
    ap.add_argument("--parallel", type=int, default=4, help="server slots and client concurrency")
    ap.add_argument("--max-tokens", type=int, default=64)
    ap.add_argument("--ctx", type=int, default=1024, help="context per request")
    ap.add_argument("--budget", type=float, default=300.0, help="seconds allowed for the burst")
    args = ap.parse_args(argv)

    server = None
    try:
        if args.url:
            base_url, model, key = args.url, args.model, args.api_key
        else:
            server = start_server(args.model, "127.0.0.1", None, parallel=args.parallel, ctx=args.ctx,
                                  timeout=300)
            base_url, model, key = server.base_url, server.model_name, server.api_key
        common = dict(max_tokens=args.max_tokens, api_key=key)
        run_load(base_url, model, requests=1, concurrency=1, **common)  # warm-up
        single = run_load(base_url, model, requests=3, concurrency=1, **common)
        burst = run_load(base_url, model, requests=args.requests, concurrency=args.parallel,
                         budget_s=args.budget, **common)
    except LowbitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    finally:
        if server is not None:
            server.stop()

    print_load(single, "reference: one request at a time")
    print_load(burst, f"burst: {args.requests} requests, {args.parallel} at a time")
    single_tps = statistics.median(r.tokens_per_s for r in single.results if r.ok) if single.succeeded else 0
    ratio = burst.aggregate_tokens_per_s / single_tps if single_tps else float("nan")
    print(f"aggregate tok/s with {args.parallel} slots / single-request tok/s = {ratio:.2f}")
    out = runs_dir() / f"serve-load-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"model": model, "single": single.to_dict(), "burst": burst.to_dict(),
                               "ratio_aggregate_vs_single": ratio}, indent=1))
    print(f"results: {out}")
    failed = burst.requests - burst.succeeded + single.requests - single.succeeded
    if failed:
        print(f"FAILED: {failed} request(s) did not succeed: {burst.summary()['errors']}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
