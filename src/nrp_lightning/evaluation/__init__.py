"""The evaluation grid: sources x attacks x defences x victims, plus adaptive attacks per defence.

``python eval.py experiment=offline`` (or ``nrp-eval experiment=offline``) composes
``conf/evaluation/eval.yaml``, builds a ``Grid`` and runs it. One job a module:

* ``grid``: what to evaluate (``Grid``, ``SelfSupervised``) and the runner that crafts, defends and
  scores every cell (``run_grid``);
* ``store``: the adversarial cache and the resumable result store;
* ``tables``: the markdown tables (Table 1, Table 5, adaptive attacks) and ``write_reports``;
* ``plots``: the accuracy-vs-eps plot, the sample grid and W&B logging;
* ``cli``: the config-to-grid bridge and the ``nrp-eval`` entry point.
"""
