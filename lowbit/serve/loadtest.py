"""Load a running OpenAI-compatible server with N concurrent chat requests and measure what came back.

Used by `benchmarks/serve_load.py` and the serving lesson. Bounded on purpose: at most MAX_REQUESTS
requests, a per-request timeout and a wall-clock budget, and loopback servers only (a load test is not
something to point at someone else's machine).
"""

from __future__ import annotations

import statistics
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import asdict, dataclass, field

from lowbit import LowbitError, procs
from lowbit.models.entries import R1_SAMPLING
from lowbit.ui import print_table

MAX_REQUESTS = 256
MAX_CONCURRENCY = 64


@dataclass
class RequestResult:
    """One request: wall latency, time to first token, tokens generated, error text if it failed."""

    index: int
    ok: bool
    latency_s: float
    ttft_s: float | None = None
    completion_tokens: int = 0
    error: str | None = None

    @property
    def tokens_per_s(self) -> float:
        return self.completion_tokens / self.latency_s if self.ok and self.latency_s > 0 else 0.0


@dataclass
class LoadResult:
    """All requests of one burst, and the summary numbers."""

    requests: int
    concurrency: int
    max_tokens: int
    wall_s: float
    results: list[RequestResult] = field(default_factory=list)

    @property
    def succeeded(self) -> int:
        return sum(r.ok for r in self.results)

    @property
    def total_tokens(self) -> int:
        return sum(r.completion_tokens for r in self.results if r.ok)

    @property
    def aggregate_tokens_per_s(self) -> float:
        """Generated tokens of all requests ÷ wall time of the whole burst."""
        return self.total_tokens / self.wall_s if self.wall_s > 0 else 0.0

    def latency_percentile(self, q: float) -> float:
        """Latency percentile (q in 0..100) over successful requests (nearest-rank)."""
        lat = sorted(r.latency_s for r in self.results if r.ok)
        if not lat:
            return float("nan")
        rank = max(1, min(len(lat), -(-len(lat) * q // 100)))
        return lat[int(rank) - 1]

    def summary(self) -> dict:
        ok = [r for r in self.results if r.ok]
        per_req = [r.tokens_per_s for r in ok]
        ttft = [r.ttft_s for r in ok if r.ttft_s is not None]
        return {
            "requests": self.requests, "succeeded": self.succeeded, "concurrency": self.concurrency,
            "max_tokens": self.max_tokens, "wall_s": round(self.wall_s, 3), "total_tokens": self.total_tokens,
            "aggregate_tokens_per_s": round(self.aggregate_tokens_per_s, 2),
            "per_request_tokens_per_s_median": round(statistics.median(per_req), 2) if per_req else None,
            "per_request_tokens_per_s_min": round(min(per_req), 2) if per_req else None,
            "latency_p50_s": round(self.latency_percentile(50), 3),
            "latency_p95_s": round(self.latency_percentile(95), 3),
            "ttft_p50_s": round(statistics.median(ttft), 3) if ttft else None,
            "errors": [r.error for r in self.results if not r.ok][:5],
        }

    def to_dict(self) -> dict:
        return {"summary": self.summary(), "results": [asdict(r) for r in self.results]}


def _check_loopback(base_url: str) -> None:
    host = urllib.parse.urlsplit(base_url).hostname or ""
    if not procs.is_loopback(host):
        raise LowbitError(f"the load test only targets servers on this machine (loopback); {base_url} "
                          "is not. Run it on the server machine.")


def _one(client, model: str, index: int, prompt: str, max_tokens: int, ignore_eos: bool) -> RequestResult:
    """One streamed chat request; latency is until the last chunk, tokens from the usage report."""
    started = time.perf_counter()
    ttft = None
    tokens = 0
    try:
        stream = client.chat.completions.create(
            model=model, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, stream=True,
            stream_options={"include_usage": True}, temperature=R1_SAMPLING["temp"],
            extra_body={"ignore_eos": ignore_eos} if ignore_eos else None)
        for chunk in stream:
            if ttft is None and chunk.choices:
                delta = chunk.choices[0].delta
                if delta.content or getattr(delta, "reasoning_content", None):
                    ttft = time.perf_counter() - started
            if chunk.usage is not None:
                tokens = chunk.usage.completion_tokens
        return RequestResult(index, True, time.perf_counter() - started, ttft, tokens)
    except Exception as exc:  # every failure counts and is reported, none stops the burst
        elapsed = time.perf_counter() - started
        return RequestResult(index, False, elapsed, ttft, 0, f"{type(exc).__name__}: {exc}")


def run_load(base_url: str, model: str, requests: int = 16, concurrency: int = 4, max_tokens: int = 64,
             api_key: str | None = None, prompt: str = "Explain in one paragraph why the sky is blue.",
             request_timeout: float = 120.0, budget_s: float = 600.0, ignore_eos: bool = True) -> LoadResult:
    """Send `requests` chat requests, `concurrency` at a time, to a loopback OpenAI-compatible server.

    `ignore_eos` makes every request generate exactly `max_tokens` (llama-server's extension), so the
    numbers compare across runs and models. Requests still running when `budget_s` is spent count as
    failed.
    """
    from openai import OpenAI  # slow to import (pydantic models); only the API clients need it

    _check_loopback(base_url)
    if not 1 <= requests <= MAX_REQUESTS:
        raise LowbitError(f"requests must be 1..{MAX_REQUESTS} (got {requests})")
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise LowbitError(f"concurrency must be 1..{MAX_CONCURRENCY} (got {concurrency})")
    client = OpenAI(base_url=base_url, api_key=api_key or "no-key", max_retries=0, timeout=request_timeout)
    started = time.perf_counter()
    pool = ThreadPoolExecutor(max_workers=concurrency)
    try:
        futures = [pool.submit(_one, client, model, i, prompt, max_tokens, ignore_eos)
                   for i in range(requests)]
        done, pending = wait(futures, timeout=budget_s)
        wall = time.perf_counter() - started
        results = [f.result() for f in futures if f in done]
        late = f"not finished within {budget_s:.0f} s"
        results += [RequestResult(futures.index(f), False, wall, error=late) for f in pending]
    finally:
        pool.shutdown(wait=False, cancel_futures=True)
        client.close()
    results.sort(key=lambda r: r.index)
    return LoadResult(requests, concurrency, max_tokens, wall, results)


def print_load(result: LoadResult, title: str = "load test") -> None:
    """A one-row table of the summary numbers."""

    s = result.summary()
    print_table(title, ["requests", "ok", "concurrency", "tokens", "wall s", "aggregate tok/s",
                        "per-request tok/s (median)", "p50 latency s", "p95 latency s", "p50 TTFT s"],
                [[s["requests"], s["succeeded"], s["concurrency"], s["total_tokens"], s["wall_s"],
                  s["aggregate_tokens_per_s"], s["per_request_tokens_per_s_median"], s["latency_p50_s"],
                  s["latency_p95_s"], s["ttft_p50_s"]]])
