"""What users do with a trained model: load it, reconstruct captures, fit, render, animate."""
