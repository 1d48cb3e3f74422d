"""The Label Studio bridge: review items and eval samples become Label Studio tasks, and
annotations come back as labels on ``review.labels``.

Pure parts (no HTTP, no Kafka): :mod:`.interface` (the labelling configs), :mod:`.tasks`
(items → tasks), :mod:`.annotations` (annotations → label messages), :mod:`.cursor`
(which annotations a poll has not sent yet). :mod:`.client` talks to Label Studio
through ``label-studio-sdk``; :mod:`hitl_router.agents.bridge` is the Faust side.
"""
