"""The throughput and latency benchmark of hitl-router against a real local Kafka.

``python -m bench.run`` (``make bench``) prefills a topic with simulated predictions and
measures, in one run: the router worker, a raw aiokafka pass-through (the ceiling), the
anchors of issue #15 (a confluent-kafka pass-through, the router's rules hand-written on
confluent-kafka and as a Quix Streams app, their fates checked against replay's), a
hand-written kafka-python router (the peer), the router's latency at half its maximum
rate, and the router scaled out to several worker processes. See ``BENCHMARKS.md``.
"""
