"""The MD5 duplicate dictionary, a side source: exact duplicate images between products.

hashing.py     every image's MD5, streamed through the index, cached per split
dictionary.py  per hash the labels of the train products holding it; purity-weighted votes
run.py         the stage: fold-honest dictionaries, votes, the 3rd place's override, preds/md5/
"""
