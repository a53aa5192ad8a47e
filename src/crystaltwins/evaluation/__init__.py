"""Results: metrics, predictions, embeddings and plots."""
