"""The shared OCR source: tesseract on the covers of books, CDs, DVDs and games, then a text classifier.

    python -m ocr.run --work work [--sources dylan bestfitting] [--workers N] [--shard i/n]

select.py   which products to read (level-1 media mass of the CNN sources' predictions)
reader.py   image preprocessing, tesseract in worker processes, the per-image-MD5 text cache
text_model.py  TF-IDF (words + char n-grams) and a linear model, trained per product fold
run.py      the stage: select, read, classify, write preds/ocr/{oof,test}.npz + summary.json
"""
