"""OCR as a node of the pipeline (common/pipeline.py) and as a side source that answers new
products (ensembling.predict: `load`, the fold text models the stage saved): read the covers of the products the solution blends call media,
classify their text. Under a scheduler its reading is split into shards (one per worker), each
into its own text cache, merged by the last task."""
from __future__ import annotations

from common.costs import StageContext, stage_row
from common.paths import WorkDir
from common.pipeline import BLEND, CPU, Node, RunOptions
from common.registry import SideSource, register_side_source, register_stage

SOURCE = "ocr"


@register_stage
def ocr_stage(opts: RunOptions, work: WorkDir, before: list[Node]) -> list[Node]:
    w = str(work.root)
    args = ("--work", w)

    def shards(n: int) -> tuple[list[tuple[str, ...]], tuple[str, ...]]:
        caches = [str(work.root / "ocr" / f"cache_shard_{i}of{n}.sqlite3") for i in range(n)]
        return [(*args, "--shard", f"{i}/{n}", "--cache", c) for i, c in enumerate(caches)], (*args, "--merge-caches", *caches)

    blends = tuple(n.name for n in before if n.kind == BLEND)
    return [Node(SOURCE, "ocr", CPU, "ocr.run", args, blends, done=(f"preds/{SOURCE}/summary.json", "ocr/text_models/predict.json"), shards=shards,
                 cost=ocr_cost, note="tesseract on the products the blends call media")]


def ocr_cost(ctx: StageContext) -> list[dict]:
    """The selection, tesseract on the media products' images, the text model (one per protocol model)."""
    from common.plan_figures import BENCH_README, MEDIA_IMAGE_SHARE, TESSERACT_IMAGES_S_CORE

    read = MEDIA_IMAGE_SHARE * ctx.counts.train_products
    text_ram, text_s = ctx.fitted("ocr_text", read)
    models = ctx.split.models
    return [stage_row("ocr (selection)", *ctx.fitted("ocr_select", ctx.products), BENCH_README),
            stage_row("ocr (tesseract)", None, MEDIA_IMAGE_SHARE * ctx.images / (TESSERACT_IMAGES_S_CORE * ctx.cores),
                      f"bench/README.md: {TESSERACT_IMAGES_S_CORE} images/s per core on {MEDIA_IMAGE_SHARE:.1%} of the images, {ctx.cores} "
                      "cores assumed; RAM: one tesseract process per core, not measured"),
            stage_row("ocr (text model)", text_ram, text_s * models, f"{BENCH_README}: one fold model on {read:,.0f} read train products "
                      f"({MEDIA_IMAGE_SHARE:.1%}), x {models} model(s); {ctx.every_core}")]


def load(work: WorkDir, summary: dict):
    """The saved fold text models, loaded once to answer new products (ocr/predict.py)."""
    from .predict import load_ocr

    return load_ocr(work, summary)


register_side_source(SOURCE, SideSource(lambda s: list(s.get("selection_sources", [])), load))  # the CNN sources choosing the products
