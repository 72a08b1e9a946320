"""The wire: the only code that imports the generated protos. ``proto`` re-exports them for the two
transport edges (the server's servicer, the client's connection); ``convert`` turns plain values into
messages and back, as pairs; ``stream`` frames a model as header plus chunks, both directions;
``options`` and ``tls`` are the channel and server settings and credentials."""
