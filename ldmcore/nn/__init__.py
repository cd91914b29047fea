"""Backbone building blocks: embeddings, attention, the UNet denoiser and the autoencoder."""
