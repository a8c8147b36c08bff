"""Emotion from the MDVAE's static latent w: the few-shot head and the change events."""
