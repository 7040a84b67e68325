"""Prometheus metrics of the server: requests, tokens, queue time and latency per model and
adapter, and what each engine holds right now (running and waiting requests, resident adapters).

Each app has its own registry, so two servers in one process (tests) do not share counts.
"""

from __future__ import annotations

_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160)
_TOKEN_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5)


class Metrics:
    def __init__(self, router):
        from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics

        disable_created_metrics()  # the *_created series only double the output

        self.registry = CollectorRegistry()
        labels = ["model", "adapter"]
        self.requests = Counter("modelmill_requests", "Requests answered, by endpoint, model, adapter and status.",
                                ["endpoint", *labels, "status"], registry=self.registry)
        self.prompt_tokens = Counter("modelmill_prompt_tokens", "Prompt tokens processed.", labels,
                                     registry=self.registry)
        self.generation_tokens = Counter("modelmill_generation_tokens", "Tokens generated.", labels,
                                         registry=self.registry)
        self.latency = Histogram("modelmill_request_latency_seconds", "Time from request to its last token.",
                                 ["endpoint", *labels], buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.queue = Histogram("modelmill_queue_time_seconds", "Time a request waited for a batch row.",
                               labels, buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.ttft = Histogram("modelmill_time_to_first_token_seconds", "Time from request to its first token.",
                              labels, buckets=_LATENCY_BUCKETS, registry=self.registry)
        self.tpot = Histogram("modelmill_time_per_output_token_seconds", "Time per generated token after the first.",
                              labels, buckets=_TOKEN_BUCKETS, registry=self.registry)
        self.registry.register(_EngineCollector(router))

    def request(self, endpoint: str, model: str, adapter: str | None, status: str, seconds: float,
                prompt_tokens: int, completion_tokens: int):
        a = adapter or ""
        self.requests.labels(endpoint, model, a, status).inc()
        if status == "200":
            self.latency.labels(endpoint, model, a).observe(seconds)
        if prompt_tokens:
            self.prompt_tokens.labels(model, a).inc(prompt_tokens)
        if completion_tokens:
            self.generation_tokens.labels(model, a).inc(completion_tokens)

    def queue_time(self, model: str, adapter: str | None, seconds: float):
        self.queue.labels(model, adapter or "").observe(seconds)

    def first_token(self, model: str, adapter: str | None, seconds: float):
        self.ttft.labels(model, adapter or "").observe(seconds)

    def per_token(self, model: str, adapter: str | None, seconds: float):
        self.tpot.labels(model, adapter or "").observe(seconds)

    def render(self) -> tuple[bytes, str]:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        return generate_latest(self.registry), CONTENT_TYPE_LATEST


class _EngineCollector:
    """Gauges read from the engines at scrape time."""

    def __init__(self, router):
        self.router = router

    def describe(self):
        return []

    def collect(self):
        from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

        running = GaugeMetricFamily("modelmill_running_requests", "Requests in the running batch.", labels=["model"])
        waiting = GaugeMetricFamily("modelmill_waiting_requests", "Requests queued for a batch row.", labels=["model"])
        resident = GaugeMetricFamily("modelmill_resident_adapters", "Adapters resident in the engine.",
                                     labels=["model"])
        each = GaugeMetricFamily("modelmill_adapter_resident", "1 for each adapter resident now.",
                                 labels=["model", "adapter"])
        steps = CounterMetricFamily("modelmill_decode_steps", "Decode passes (one token for every running row).",
                                    labels=["model"])
        rows = CounterMetricFamily("modelmill_decoded_rows", "Rows decoded, summed over passes (rows/steps: "
                                   "mean batch size).", labels=["model"])
        loads = CounterMetricFamily("modelmill_adapter_loads", "Adapters made resident.", labels=["model"])
        evictions = CounterMetricFamily("modelmill_adapter_evictions", "Adapters evicted (LRU).", labels=["model"])
        cached = CounterMetricFamily("modelmill_prefix_cached_tokens", "Prompt tokens read from the prefix cache "
                                     "instead of computed (of modelmill_prompt_tokens).", labels=["model"])
        for key, eng in list(self.router.engines.items()):
            st = eng.stats()
            running.add_metric([key], st.running)
            waiting.add_metric([key], st.waiting)
            resident.add_metric([key], len(st.resident_adapters))
            for a in st.resident_adapters:
                each.add_metric([key, a], 1)
            steps.add_metric([key], st.decode_steps)
            rows.add_metric([key], st.decoded_rows)
            loads.add_metric([key], st.adapter_loads)
            evictions.add_metric([key], st.adapter_evictions)
            cached.add_metric([key], st.prefix_cached_tokens)
        yield from (running, waiting, resident, each, steps, rows, loads, evictions, cached)
