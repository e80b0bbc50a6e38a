"""The three winning solutions, one folder each (train.py, submit.py, configs/*.yaml, README.md)."""
