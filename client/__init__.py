"""The hospital node: fed-client, its connection loop and local training."""
