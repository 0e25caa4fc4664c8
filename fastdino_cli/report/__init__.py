"""The comparison report of run directories and the demo that produces them.

``read`` (what a run directory holds) -> ``tables`` (the numbers per run) and ``figures``
(comparison plots drawn by ``fastdino_cli.figures``) -> ``build`` (report.md, with ``markdown``'s
cells); ``recipes`` groups runs that differ only in their seed, ``intervals`` holds the bootstrap,
``recipe_tables`` / ``recipe_markdown`` the per-recipe numbers and sections; ``steps`` runs a
run's missing evaluations, ``demo`` the whole pipeline.
"""
