"""The project's benchmarks, each run as a script: ``throughput.py`` (the prediction path's speed
and memory; its cases, models and tables are the modules beside it), ``review_page.py`` (the
results page on a large table) and ``learning_curve.py`` (what retraining learns from corrections)."""
