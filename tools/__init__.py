"""Operator and research commands above the server and the client, never imported by them: fed-certs,
fed-partition, fed-demo, fed-study, and the process launcher they share with the benchmarks and tests."""
