"""The HeadsUp networks (Flax NNX): encoder, latent compressor, UV decoder, background, LPIPS."""
