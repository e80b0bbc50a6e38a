"""What combines the sources: the solution / team blends (blend.py), the XGBoost stacker (stack/)
and the leaderboard report (report.py, plots.py)."""
