"""The coordinator: fed-server, its round logic, aggregation strategies and outputs."""
