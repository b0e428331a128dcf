"""Pure PyTorch models: the inpainting generator, the patch discriminator, their losses, weight files, tiling."""
