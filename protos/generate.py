"""Regenerate weir/protos/ from the .proto files beside this script.

Run from anywhere: ``python protos/generate.py`` (needs the ``dev`` extra: grpcio-tools for
protoc and betterproto2-compiler for the plugin). The output is committed so that users need
neither tool.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
TARGET = HERE.parent / "weir" / "protos" / "snapchain"
DESCRIPTORS = HERE.parent / "weir" / "protos" / "snapchain.binpb"


def main() -> int:
    sources = sorted(str(p.name) for p in HERE.glob("*.proto"))
    with tempfile.TemporaryDirectory() as out:
        command = [
            sys.executable, "-m", "grpc_tools.protoc", f"-I{HERE}",
            f"--python_betterproto2_out={out}",
            "--python_betterproto2_opt=client_generation=async,server_generation=async",
            *sources,
        ]
        # protoc finds the plugin, and the plugin finds ruff (its formatter), on PATH: put this
        # Python's bin first, so the script works from a venv that is not activated.
        bin_dir = str(Path(sys.executable).parent)
        env = dict(os.environ, PATH=os.pathsep.join([bin_dir, os.environ.get("PATH", "")]))
        subprocess.run(command, check=True, cwd=HERE, env=env)
        if TARGET.exists():
            shutil.rmtree(TARGET)
        shutil.copytree(out, TARGET)
    # The same files as one descriptor set, for the protobuf package's C decoder on the hot path
    # (weir/codecs/farcaster_upb.py).
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", f"-I{HERE}", f"--descriptor_set_out={DESCRIPTORS}",
                    *sources], check=True, cwd=HERE)
    print(f"generated {TARGET.relative_to(HERE.parent)} and {DESCRIPTORS.relative_to(HERE.parent)} "
          f"from {len(sources)} .proto files")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
