"""Rebuilds a job's trained model from its artifact the three ways the services do, and
prints how far each is from the trained model on the artifact's probe (KL, nats):

    python tests/rebuild.py ARTIFACT_DIR BASE_MODEL_FOLDER

- "reloaded": ``load_trained(trainable=False)``, as the serve service attaches a result;
- "resumable": ``load_trained(trainable=True)``, as a resumed job would, with the number
  of trainable parameters it left;
- "merged": ``merge``, where the method can, as an export does.

It runs as its own process because a method may import a library that patches others
(Unsloth, when resuming), which must not happen inside the test runner.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from tunewright import contract
from tunewright.contract import MANIFEST, Manifest
from tunewright.core import probe
from tunewright.methods import detect_runtime
from tunewright.parameters import build_config
from tunewright.plugin_manager import get_method, load_methods


def main(artifact: Path, folder: Path) -> dict:
    manifest = contract.from_json((artifact / MANIFEST).read_bytes(), Manifest)
    method = get_method(load_methods(), manifest.method)
    config = build_config(method, manifest.method_parameters)
    trained, probe_file, runtime = artifact / manifest.trained, artifact / manifest.probe.file, detect_runtime()
    result = {"tolerance": manifest.probe.tolerance, "compute_dtype": manifest.probe.compute_dtype}
    result["reloaded"] = probe.measure(
        method.load_trained(folder, config, trained, runtime, trainable=False), probe_file
    )
    result["merged"] = (
        probe.measure(method.merge(folder, config, trained), probe_file) if method.capabilities.mergeable else None
    )
    for module in method.capabilities.import_first:  # as a worker does before resuming
        __import__(module)
    resumable = method.load_trained(folder, config, trained, runtime, trainable=True)
    result["resumable"] = probe.measure(resumable, probe_file)
    result["trainable_parameters"] = sum(p.numel() for p in resumable.parameters() if p.requires_grad)
    return result


if __name__ == "__main__":
    print(json.dumps(main(Path(sys.argv[1]), Path(sys.argv[2]))))
