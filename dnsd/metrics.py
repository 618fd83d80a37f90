"""dnsd's Prometheus face: a custom collector that turns the plain counts of :mod:`dnsd.stats` into metric
families when /metrics is scraped, summed over every worker process. Nothing here runs per query."""
from __future__ import annotations

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily

from .stats import FORWARD_BUCKETS, Hub


class DnsCollector:
    def __init__(self, hub: Hub) -> None:
        self.hub = hub

    def describe(self):
        return []  # families are made at scrape time; nothing to check at registration

    def collect(self):
        total = self.hub.total()
        queries = CounterMetricFamily("berth_dns_queries", "DNS queries answered, by question type and response "
                                      "code (cached answers included)", labels=("type", "rcode"))
        for key, count in sorted(total["queries"].items()):
            qtype, rcode = key.split(" ")
            queries.add_metric((qtype, rcode), count)
        yield queries
        caches = total["caches"]
        for field, name, kind, text in (
                ("hits", "berth_dns_cache_hits", CounterMetricFamily, "Questions answered from a cache"),
                ("misses", "berth_dns_cache_misses", CounterMetricFamily, "Questions a cache did not hold"),
                ("evictions", "berth_dns_cache_evictions", CounterMetricFamily,
                 "Entries dropped (oldest first) to stay within the cache's bounds"),
                ("entries", "berth_dns_cache_entries", GaugeMetricFamily, "Entries held in a cache"),
                ("bytes", "berth_dns_cache_size_bytes", GaugeMetricFamily, "Bytes a cache accounts for")):
            family = kind(name, f"{text}: answers_udp/answers_tcp hold packed zone answers, upstream the "
                          "forwarded ones", labels=("cache",))
            for cache in sorted(caches):
                family.add_metric((cache,), caches[cache].get(field, 0))
            yield family
        forward = total["forward"]
        cumulative, running = [], 0
        for bound, count in zip((*FORWARD_BUCKETS, float("inf")), forward["buckets"]):
            running += count
            cumulative.append(("+Inf" if bound == float("inf") else repr(bound), running))
        yield HistogramMetricFamily("berth_dns_forward_duration_seconds", "Time to get an answer from the upstream "
                                    "resolvers (failover and TCP retry included)", buckets=cumulative,
                                    sum_value=forward["sum"])
        failures = CounterMetricFamily("berth_dns_forward_failures", "Forwarded questions no upstream answered "
                                       "(the client got SERVFAIL), and questions refused a forwarding slot "
                                       "because too many were waiting", labels=("reason",))
        failures.add_metric(("no_answer",), forward["failures"])
        failures.add_metric(("overload",), forward["overflow"])
        yield failures
        workers = GaugeMetricFamily("berth_dns_workers", "Worker processes whose counts this scrape includes, "
                                    "and how many are configured", labels=("state",))
        workers.add_metric(("answering",), total["workers"])
        workers.add_metric(("configured",), total["expected"])
        yield workers
        cpu = CounterMetricFamily("berth_dns_worker_cpu_seconds", "CPU time (user and system) of the processes "
                                  "answering queries, summed over the workers answering")
        cpu.add_metric((), total["cpu_seconds"])
        yield cpu
        yield GaugeMetricFamily("berth_dns_worker_resident_memory_bytes", "Resident memory of the processes "
                                "answering queries, summed over the workers answering", value=total["resident_bytes"])
