"""The distillation engine, shared by ``coordinator distill --local`` and the federated run."""
