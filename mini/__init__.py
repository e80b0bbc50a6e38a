"""The embedded mini dataset: a small Cdiscount look-alike with the properties the winners exploited.

    python -m mini --work W [--preset tiny|default] [--seed 0] [--force] [--measure]

plan.py      presets, categories from the real tree, the product plan, cover themes, duplicates
render.py    category looks and product views (shapes, colours, textures, poses)
covers.py    book / CD / DVD covers with a French title, the energy label, the placeholder, JPEG
generate.py  rendering in worker processes, the files, the stage
measure.py   the properties of a written dataset, measured from its files
"""
from .generate import generate, main
from .plan import MEDIA_GROUPS, PAPER_IMAGE_COUNTS, PRESETS, THEMES, VERSION, plan_products, real_category_sizes, select_categories

__all__ = ["generate", "main", "MEDIA_GROUPS", "PAPER_IMAGE_COUNTS", "PRESETS", "THEMES", "VERSION", "plan_products", "real_category_sizes",
           "select_categories"]
