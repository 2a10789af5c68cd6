"""The device agent: streaming ingestion, offramps and selective offload."""
