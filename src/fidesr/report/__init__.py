"""``fidesr.report``: tables and figures of a Hydra sweep (what ``fidesr-report`` writes).

Modules, in the order data flows through them:

- ``jobs``: a job folder (overrides, config, run record, last validation, per-image values, images, logs);
- ``aggregate``: jobs into configurations, mean ± std over seeds, paired differences from a baseline and
  the "best" rule; ``stats``: the bootstrap interval and the signed-rank test behind them;
- ``provenance``: whether the jobs are comparable (commits, source, configs);
- ``tables`` (Markdown), ``plots`` (figures), ``comparisons`` (the same crops from every configuration),
  ``tracker`` (W&B upload);
- ``ablation`` and ``lfim``: the two reports, each writing its files into the sweep folder.
"""
