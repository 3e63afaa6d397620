"""Networks: purifiers P, the critic C and frozen feature extractors F."""
from nrp_lightning.models.critic import VGGCritic
from nrp_lightning.models.purifier import ResNetPurifier, RRDBPurifier, purify

__all__ = ["RRDBPurifier", "ResNetPurifier", "VGGCritic", "purify"]
