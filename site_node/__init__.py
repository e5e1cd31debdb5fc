"""Hospital-side node: local teacher training, teacher queries and federated evaluation."""
