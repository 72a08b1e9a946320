"""Provenance: who contributed which bytes to which round, in a form anyone holding the federation's CA
can check after the fact (issue 19). Pure and without transport, like common/secagg/:

- ``digests``: SHA-256 of an update as it travelled (federation, round, count, tensor table, bytes) and of
  a model (its tensors by name, independent of how they were laid out or stored);
- ``signing``: signatures with a TLS certificate's key, each over a labelled message, and the checks a
  certificate must pass to vouch for a hospital or a coordinator;
- ``records``: the audit chain's records (``audit.jsonl``) and their canonical JSON;
- ``receipts``: the coordinator's signed receipt for an accepted update, and what a hospital keeps of
  each update it sent;
- ``chain``: walking a chain and naming the first record that does not verify.

The coordinator writes the chain (server/audit_log.py), hospitals sign their updates and keep their
receipts (client/receipts.py), and ``fed-audit`` (tools/audit/) verifies all of it.
"""
