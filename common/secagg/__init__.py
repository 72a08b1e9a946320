"""Secure aggregation's building blocks (SecAgg+, Bonawitz et al. CCS 2017 and Bell et al. CCS 2020),
each pure and small, so that the protocol's stages (a later layer) are plain compositions of them:

- ``shamir``: t-of-n secret sharing over the prime field GF(2^521 - 1), for the self-mask seeds and the
  masking keys a dropped hospital's peers must be able to rebuild;
- ``prg``: a seed expanded into a mask vector with AES-256-CTR (keys through HKDF), never numpy's generators;
- ``fixed_point``: an update's difference from the global model, clipped, weighted and quantized to
  integers modulo 2^32, so the sum of the masked vectors unmasks to the weighted average;
- ``keys``: each hospital's two X25519 key pairs, signed with its TLS certificate's key so peers can
  verify them against the federation's CA, the pairwise secrets agreed from them, and the authenticated
  encryption (AES-GCM) of the shares sent to each peer through the coordinator;
- ``masking``: one hospital's masked vector, and the unmasking of a sum from what the survivors reveal.

Secrets come from the operating system's generator (``secrets``, ``os.urandom``) and from AES-CTR.
"""
