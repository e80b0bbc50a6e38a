"""Sources and tools that combine what the image models predict: the MD5 duplicate dictionary (md5.py)."""
