"""Few-shot meta-learning through one episode interface: NIW-Meta, MAML and prototypical networks."""

from uqkit.inference.meta.base import EpisodeSampler, FlatNet, MetaLearner
from uqkit.inference.meta.maml import MAML
from uqkit.inference.meta.niw_meta import NIWMeta
from uqkit.inference.meta.protonet import ProtoNet

__all__ = ["MAML", "EpisodeSampler", "FlatNet", "MetaLearner", "NIWMeta", "ProtoNet"]
