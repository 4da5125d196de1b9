"""LPIPS trunks and the weights variable: plain names that the CLI's parser reads without importing torch."""

LPIPS_NETS = ("alex", "vgg")
WEIGHTS_ENV = "FORESIGHT_LPIPS_WEIGHTS"
