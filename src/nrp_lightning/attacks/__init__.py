"""Attacks: plain callables on ``(B, 3, H, W)`` images in [0, 1], budgets in pixel units (/255).

``nrp_lightning.attacks.ssp.ssp`` is the SSP function, ``SSP`` its configurable callable.
"""
from nrp_lightning.attacks.ssp import SSP, project_linf, random_start

__all__ = ["SSP", "project_linf", "random_start"]
