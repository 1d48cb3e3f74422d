"""The throughput and latency benchmark of hitl-router against a real local Kafka.

``python -m bench.run`` (``make bench``) prefills a topic with simulated predictions and
measures, in one run: the router worker, a raw aiokafka pass-through (the ceiling), a
hand-written kafka-python router (the peer), the router's latency at half its maximum
rate, and the router scaled out to several worker processes. See ``BENCHMARKS.md``.
"""
