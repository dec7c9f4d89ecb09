"""plmkit: efficient transfer and compression of pretrained language models."""

__version__ = "0.1.0"
