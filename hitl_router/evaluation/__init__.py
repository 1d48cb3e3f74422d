"""``hitl-router evaluate-loop``: does routing pay? A closed-loop simulation.

A real scikit-learn committee predicts on a stream; each strategy (the config's routing
through the router's own ``decide_batch``, a uniform random draw through the eval
sampler, and single scores at a rate that spends the same budget) buys labels from a
simulated review team; the committee is refitted every R labels, and accuracy is
measured only on a held-out set no strategy can select from.

Modules: ``tasks`` (the data, the drift and the annotators' difficulty), ``strategies``
(each one a router ``Policy``), ``loop`` (one seed, every strategy), ``curves`` (pure
numpy: savings, paired comparison, cost per point, warning signs), ``plot`` (the PNG),
``command`` (the CLI).
"""
