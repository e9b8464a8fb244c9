"""Next Token Perception Score (NTPS): the package behind ntps-workflow.

The maths (statistics, eigen-solvers, scores) is pure and importable on its own::

    from ntps.stats import StatisticsAccumulator
    from ntps.scores import score_layer
"""

__version__ = "0.1.0"
