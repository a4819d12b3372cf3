"""weir: supervised, lossless ingestion of decentralised network event streams into Redis."""

__version__ = "0.1.0"
