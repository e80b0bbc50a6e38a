"""The measured figures the plan (common/plan.py) projects from: the CPU stages' fits of
`python bench/bench_scale.py --quick` and the disk / OCR rates of bench/README.md. Rerun the bench
and update these after a change that moves them."""

# `python bench/bench_scale.py --quick` (bench/README.md): peak MB = a + b x millions of units, seconds = s x millions + fixed.
BENCH_README = "bench/README.md (bench_scale.py --quick: a + b x products fitted over 50,000-200,000 products, 2 cores)"
BENCH_CORES, CPU_FITS = 2, {
    "index": (145, 24, 2.6, 0.6),
    "stats": (177, 82, 20.0, 1.2),
    "ocr_select": (247, 131, 8.2, 0.0),
    "ocr_text": (677, 8758, 1282.8, 0.0),  # per read train product, one fold model: fit + top-K of a quarter as many
    "md5": (139, 311, 9.5, 1.3),
    "stack_holdout": (1592, 597, 782.3, 2.6),  # the holdout's CV + final model, every product predicted
    "report": (214, 65, 4.3, 1.7),
    "stack_all": (844, 5567, 2203.0, 0.0),  # kfold: every OOF product trains (an older bench: 3 sources, 50 rounds)
}
STACK_FIT_ROUNDS = {"stack_holdout": 200, "stack_all": 50}  # the rounds each stack fit ran; time scaled linearly (an upper bound)
STACK_SOURCES_NOTE = "20 synthetic top-20 sources: 16 prediction recipes, 3 solution / team blends, OCR; + MD5"
PARALLEL_STAGES = {"ocr_text", "md5", "stack_holdout", "stack_all"}  # every core: time x BENCH_CORES / cores (linear assumed)
COLD_READ_MB_S = 1710.0  # bench/README.md: plain sequential read from disk (bench_bson.py --cold)
TESSERACT_IMAGES_S_CORE = 57.8  # bench/README.md: tesseract on these product photos, per core (bench_scale.py --quick)
MEDIA_IMAGE_SHARE = 0.114  # bench/README.md: images of the products the OCR stage reads
INDEX_BYTES, HASH_BYTES = 29, 25  # common.bson_index.INDEX_DTYPE, md5.hashing.HASH_DTYPE per product / image
