"""The XGBoost stacker: every prediction source's OOF top-K -> one candidate ranker -> the submission.

    python -m ensembling.stack --work work [--sources a b ...] [--max-train-products N]
                               [--device auto|cpu|cuda] [--objective binary|rank] [--include-blends] [--dask SCHEDULER|local[:N]]
                               [--any-StackConfig-field V] [--config stack.yaml]

Candidates of a product = the union of its sources' top labels (`--candidates-per-source`, default
all K). One row per (product, candidate); the features (see `feature_names`):
  per source s   s:prob (0 when the candidate is not in s's top-K or s has no row for the product),
                 s:rank (1 = s's top-1; K+1 when absent), s:top (s's top-1 probability: its
                 confidence; 0 when s has no row); side sources (md5, ocr) also s:share (the
                 candidate's share of s's mass: the MD5 vote share) and s:labels (how many labels s
                 names: 1 = a pure MD5 match; 0 = no row)
  per candidate  n_imgs, prior (log train frequency of the candidate, leave-fold-out), level1 (its
                 level-1 group), level1_agree / top1_votes (share of the product's sources whose
                 top-1 is in that group / is that label), n_sources, mean_prob, geo_prob, max_prob,
                 best_rank
XGBoost learns "is this candidate the true label" (binary:logistic, or rank:pairwise grouped by
product); a product's prediction is its best-scoring candidate, its probabilities the softmax of
the candidates' margins. A product whose true label is in no candidate cannot be fixed: that
ceiling is the candidate recall, reported beside the accuracy.

Honest CV: the folds of folds.csv. The OOF rows of fold k came from models that did not see fold
k, and the stacker of fold k is trained on the other folds' products only, so every reported
number is measured on products no stage learned from. Every baseline is scored on the SAME
products (those with at least one source row): each single source, the arithmetic and geometric
means, the 2nd team's weighted sqrt blend. The final model learns from all OOF products (or a
sample: --max-train-products) and predicts test.

Which sources: every finished source of the registry (common/sources.py) except ablations and
except blends whose members are all stacked already: a blend is a fixed function of its members,
which the trees see already (with mean/geo features), so it adds only correlated columns. Measured
on the mini data (8 sources, 3 folds, `python -m ensembling.stack --work W [option]` on the work
dir of a fresh ./run_all.sh): CV 0.8323 without the 3 blends, 0.8332 with them (+9 features, 19%
slower; the folds alone spread from 0.8290 to 0.8385, so neither differs beyond noise).
`--include-blends` keeps them. Blends are always scored as baselines. Same measurement for the
other choices: rank:pairwise 0.8348 (39% slower than binary); --candidates-per-source 10: 0.8340,
candidate recall 0.962 instead of 0.981, 36% faster (the setting for the full data, where K=20
from ~30 sources would be large).

Memory: features are built per chunk of products (`--chunk-products`) and fed to XGBoost through
a DataIter into a QuantileDMatrix (1 byte per value, chunks rebuilt on each pass instead of
kept), prediction streams chunk by chunk, and `--max-train-products` bounds the training set.
At full scale (7.07M products x ~30 candidates x ~35 features) that keeps one machine in budget;
`--device cuda` (or auto) trains on the GPU. Past one machine, `--dask tcp://scheduler:8786` (or
`--dask local:N`: a LocalCluster of N processes here) trains and predicts through xgboost.dask
(engine.py); `--export-features DIR` writes the chunks (one .npz each: X, y, qid; never pickled)
for another engine (xgboost.spark), and `--model model.ubj` predicts test with the model it trained
(no CV: the model saw every OOF product).

Writes work/preds/stack/{oof,test}.npz + summary.json, work/submissions/stack.csv.gz (validated:
every test product once; products no source predicts get the most frequent train category),
work/stack/{model.ubj,features.json}.

Modules: config.py (the options), inputs.py (sources and products), features.py (candidates and
their features), baselines.py (every baseline on the same products), booster.py (XGBoost:
streamed training, prediction, saved models), engine.py (this process or dask), run.py (CV, final model, submission, summary).
"""
from __future__ import annotations

from .config import StackConfig
from .run import run_stack

__all__ = ["StackConfig", "run_stack"]
