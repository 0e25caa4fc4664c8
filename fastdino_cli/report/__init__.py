"""The comparison report of run directories and the demo that produces them.

``read`` (what a run directory holds) -> ``tables`` (the numbers) and ``figures`` (comparison
plots drawn by ``fastdino_cli.figures``) -> ``build`` (report.md); ``steps`` runs a run's missing
evaluations, ``demo`` the whole pipeline.
"""
