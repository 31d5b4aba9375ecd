"""One training loop (``loop``) and the models trained on it: classifier, generator, rejection head."""
