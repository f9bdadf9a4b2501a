"""CTR models: thin compositions of `jaxrec.layers`, selected by name."""

from jaxrec.models.ctr_model import CTRModel
from jaxrec.models.registry import MODELS, ModelConfig, build_network
