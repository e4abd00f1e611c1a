"""Pictures of a net's numbers: learned kernels and feature maps as PNG mosaics
(filters, activations, built on mosaic) and training curves (curves)."""
