"""Low-rank factorization of Dense layers as pure transforms over param trees.

Every transform is ``(params, FactorizeConfig) -> (params', config')``, one
per module of the same name (`before.before`, `svd.svd`, `nmf.nmf`,
`auto.auto`, also in `TRANSFORMS`), where
config' records the per-layer ranks applied. Only the kernels of Dense layers
change; every other leaf (biases, embeddings, attention vectors) is returned
as the same array.

* `before`: fresh factors, trained from scratch (apply right after init).
* `svd`: truncated SVD of trained kernels.
* `nmf`: non-negative factorization of the sign parts of trained kernels.
* `auto`: per-layer rank from validation logloss or spectral energy, then SVD.
"""

from jaxrec.factorize import auto, before, nmf, svd
from jaxrec.factorize.auto import choose_ranks
from jaxrec.factorize.rank import (METHODS, FactorizeConfig, LayerPlan, dense_layer_paths,
                                   layer_ranks, plan, rank_rule)
from jaxrec.factorize.svd import reconstruction_report

# method name -> transform (params, FactorizeConfig) -> (params', FactorizeConfig).
TRANSFORMS = {"before": before.before, "svd": svd.svd, "nmf": nmf.nmf, "auto": auto.auto}
