"""Generated protobuf models (betterproto2). Do not edit: run ``python protos/generate.py``."""
