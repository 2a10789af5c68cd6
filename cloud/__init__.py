"""The cloud worker: the gRPC service that runs the full model."""
