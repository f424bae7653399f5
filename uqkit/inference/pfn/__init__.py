"""Prior-data fitted networks (PFN): amortised Bayesian prediction in one transformer forward pass.

Müller, Hollmann, Pineda, Grabocka, Hutter, "Transformers Can Do Bayesian Inference" (ICLR 2022).
"""

from uqkit.inference.pfn.bar import BarDistribution, borders_from_samples
from uqkit.inference.pfn.model import PFNConfig, PFNTransformer, pfn_attention_mask
from uqkit.inference.pfn.pfn import PFN
from uqkit.inference.pfn.train import TrainConfig, train_pfn

__all__ = ["PFN", "BarDistribution", "PFNConfig", "PFNTransformer", "TrainConfig", "borders_from_samples",
           "pfn_attention_mask", "train_pfn"]
