"""nrp-lightning: train and use Neural Representation Purifiers (NRP) and the SSP attack."""
__version__ = "0.1.0"
