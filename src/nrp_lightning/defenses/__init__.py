"""Defences as input transformations ``(B,3,H,W)`` in [0,1] -> same shape, each with a BPDA path."""
from nrp_lightning.defenses.base import Defense, NoDefense, straight_through
from nrp_lightning.defenses.nrp import NRPDefense, load_nrp
from nrp_lightning.defenses.transforms import (JPEG, TVM, BitDepth, DynamicNoise, GaussianBlur, MedianFilter,
                                              RandomResizePad)

__all__ = ["JPEG", "TVM", "BitDepth", "Defense", "DynamicNoise", "GaussianBlur", "MedianFilter", "NRPDefense", "NoDefense",
           "RandomResizePad", "load_nrp", "straight_through"]
